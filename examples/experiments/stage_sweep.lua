-- stage_sweep.lua: ZeRO stages (none, stage1, stage2, stage3) x micro-batch sizes on CPU
-- ranks with examples/tiny.toml. For every combination it asks zp.plan for the predicted
-- memory per rank and trains a few steps in child processes (zp launch -n RANKS), then writes
--   stage_sweep.csv / stage_sweep.md   memory by category (the real runs' ledger beside the
--                                      plan), tokens/s, ms/step, final loss
--   memory_by_category.svg            stacked bars: memory per rank by category, per stage
--   tok_s.svg                          grouped bars: tokens/s per stage and micro-batch
-- into the output directory (default runs/stage_sweep/).
--
--   zp run examples/experiments/stage_sweep.lua                       # 4 steps, 2 ranks, mb 4,8
--   zp run examples/experiments/stage_sweep.lua --arg steps=50 --arg micro_batches=4,8,16
--
-- Parameters (--arg name=value): steps (4), ranks (2), micro_batches ("4,8").

local steps = math.tointeger(tonumber(zp.args.steps or "4"))
local ranks = math.tointeger(tonumber(zp.args.ranks or "2"))
assert(steps and steps >= 1, "--arg steps must be a positive integer")
assert(ranks and ranks >= 1, "--arg ranks must be a positive integer")
local mbs = {}
for m in (zp.args.micro_batches or "4,8"):gmatch("%d+") do mbs[#mbs + 1] = math.tointeger(tonumber(m)) end
assert(#mbs > 0, "--arg micro_batches must list integers, e.g. 4,8")

local stages = {"none", "stage1", "stage2", "stage3"}
local cats = {"PARAM", "GRAD", "MASTER", "OPTIM", "ACT", "BUFFER"}
local NAN = 0 / 0

-- the README's tiny model; no validation or checkpoints: this sweep measures memory and speed
local base = zp.config("../tiny.toml"):with{
  ["data.val"] = "",
  ["train.save_final"] = false,
  ["train.checkpoint_every"] = 0,
  ["train.log_every"] = 1,
}

local rows = {}
for _, stage in ipairs(stages) do
  for _, mb in ipairs(mbs) do
    local cfg = base:with{["zero.plugin"] = stage, ["train.micro_batch"] = mb}
    local plan = zp.plan(cfg, {world = ranks})
    local run = zp.train(cfg, {name = stage .. "-mb" .. mb, steps = steps, ranks = ranks})
    local row = {
      stage = stage, micro_batch = mb, ranks = ranks, steps = run.n_steps, ok = run.ok,
      tok_s = run.mean_tok_s or NAN, ms_step = run.mean_ms or NAN,
      final_loss = run.final_loss or NAN,
      model_states = run.model_states or NAN, plan_model_states = plan.model_states,
      plan_total = plan.total, error = run.error or "",
    }
    for _, c in ipairs(cats) do
      row[c] = run.mem and run.mem[c] or NAN
      row["plan_" .. c] = plan.mem[c]
    end
    if not run.ok then zp.log("run " .. stage .. " mb " .. mb .. " failed: " .. run.error) end
    rows[#rows + 1] = row
  end
end

local cols = {"stage", "micro_batch", "ranks", "steps", "ok", "tok_s", "ms_step", "final_loss"}
for _, c in ipairs(cats) do cols[#cols + 1] = c end
cols[#cols + 1] = "model_states"
for _, c in ipairs(cats) do cols[#cols + 1] = "plan_" .. c end
for _, c in ipairs({"plan_model_states", "plan_total", "error"}) do cols[#cols + 1] = c end
zp.write_csv("stage_sweep", rows, cols)

local mib = {}
for _, c in ipairs({"PARAM", "GRAD", "MASTER", "OPTIM", "ACT", "BUFFER", "model_states", "plan_model_states", "plan_total"}) do
  mib[c] = "MiB"
end
mib.tok_s, mib.ms_step, mib.final_loss = "%.0f", "%.1f", "%.4f"
zp.write_markdown("stage_sweep", rows,
  {"stage", "micro_batch", "tok_s", "ms_step", "final_loss", "PARAM", "GRAD", "MASTER", "OPTIM",
   "ACT", "BUFFER", "model_states", "plan_model_states", "plan_total", "ok"},
  {title = string.format("ZeRO stages on %d CPU ranks, tiny model, %d steps (memory per rank in MiB)", ranks, steps),
   formats = mib})

-- memory per rank by category, one stacked bar per stage (the first micro-batch size)
local series = {}
for _, c in ipairs(cats) do
  local v = {}
  for _, r in ipairs(rows) do
    if r.micro_batch == mbs[1] then v[#v + 1] = r[c] end
  end
  series[#series + 1] = {label = c, values = v}
end
zp.plot_bars("memory_by_category", {
  title = string.format("Memory per rank by category (%d ranks, micro-batch %d)", ranks, mbs[1]),
  xlabel = "ZeRO stage", ylabel = "bytes per rank (ledger)", y_format = "bytes",
  stacked = true, groups = stages, series = series,
})

local tseries = {}
for _, mb in ipairs(mbs) do
  local v = {}
  for _, r in ipairs(rows) do
    if r.micro_batch == mb then v[#v + 1] = r.tok_s end
  end
  tseries[#tseries + 1] = {label = "micro-batch " .. mb, values = v}
end
zp.plot_bars("tok_s", {
  title = string.format("Training throughput (%d CPU ranks)", ranks),
  xlabel = "ZeRO stage", ylabel = "tokens/s", groups = stages, series = tseries,
})
zp.log("wrote stage_sweep.csv, stage_sweep.md, memory_by_category.svg, tok_s.svg to " .. zp.out_dir)
