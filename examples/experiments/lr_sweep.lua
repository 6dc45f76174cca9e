-- lr_sweep.lua: a learning-rate sweep on examples/tiny.toml (one CPU rank each). Every
-- learning rate trains STEPS steps in its own process; the script then writes
--   lr_sweep.csv / lr_sweep.md   final, best and validation loss, tokens/s per learning rate
--   loss_curves.svg             training loss per step, one line per learning rate
-- into the output directory (default runs/lr_sweep/).
--
--   zp run examples/experiments/lr_sweep.lua                         # 20 steps per lr
--   zp run examples/experiments/lr_sweep.lua --arg steps=600 --arg lrs=1e-3,3e-3,1e-2
--
-- Parameters (--arg name=value): steps (20), ranks (1), lrs ("1e-3,3e-3,1e-2,3e-2").

local steps = math.tointeger(tonumber(zp.args.steps or "20"))
local ranks = math.tointeger(tonumber(zp.args.ranks or "1"))
assert(steps and steps >= 1, "--arg steps must be a positive integer")
assert(ranks and ranks >= 1, "--arg ranks must be a positive integer")
local lrs = {}
for v in (zp.args.lrs or "1e-3,3e-3,1e-2,3e-2"):gmatch("[^,]+") do
  lrs[#lrs + 1] = assert(tonumber(v), "--arg lrs: not a number: " .. v)
end
local NAN = 0 / 0

-- cosine schedule over the run, 20% warm-up; validation once at the end; no checkpoints
local base = zp.config("../tiny.toml"):with{
  ["train.lr_schedule"] = "cosine",
  ["train.warmup_steps"] = math.max(1, steps // 5),
  ["train.val_every"] = 0,
  ["train.save_final"] = false,
  ["train.checkpoint_every"] = 0,
  ["train.log_every"] = math.max(1, steps // 10),
}

local rows, curves = {}, {}
for i, lr in ipairs(lrs) do
  local run = zp.train(base:with{["train.lr"] = lr},
                       {name = string.format("lr%d_%g", i, lr), steps = steps, ranks = ranks})
  rows[#rows + 1] = {
    lr = lr, steps = run.n_steps, ok = run.ok,
    first_loss = run.first_loss or NAN, final_loss = run.final_loss or NAN,
    min_loss = run.min_loss or NAN, val_loss = run.val_loss or NAN,
    tok_s = run.mean_tok_s or NAN, error = run.error or "",
  }
  curves[#curves + 1] = {label = string.format("lr %g", lr), x = run.step, y = run.loss}
end

local cols = {"lr", "steps", "ok", "first_loss", "final_loss", "min_loss", "val_loss", "tok_s", "error"}
zp.write_csv("lr_sweep", rows, cols)
zp.write_markdown("lr_sweep", rows, {"lr", "steps", "final_loss", "min_loss", "val_loss", "tok_s", "ok"},
  {title = string.format("Learning-rate sweep, tiny model, %d steps", steps),
   formats = {lr = "%g", final_loss = "%.4f", min_loss = "%.4f", val_loss = "%.4f", tok_s = "%.0f"}})
zp.plot_lines("loss_curves", {
  title = string.format("Training loss, tiny model (%d steps, cosine schedule)", steps),
  xlabel = "step", ylabel = "loss", series = curves,
})

local best
for _, r in ipairs(rows) do
  if r.ok and (not best or r.final_loss < best.final_loss) then best = r end
end
if best then zp.log(string.format("best lr %g: final loss %.4f", best.lr, best.final_loss)) end
