-- must succeed: a failing training run is a result, not a driver error; configuration errors in
-- cfg:set name the key with a suggestion; waiting for a run costs no Lua instructions (this
-- runs under --max-instructions 200000 while zp.train waits for its child).
local cfg = zp.config("../../examples/tiny.toml"):with{
  ["data.val"] = "", ["train.save_final"] = false, ["model.seq_len"] = 32,
  ["train.micro_batch"] = 2,
}
local ok, err = pcall(cfg.set, cfg, "train.micro_bach", 4)
assert(not ok)
local bad = zp.train(cfg, {name = "bad", steps = 2, set = {["train.stpes"] = 2}})
local good = zp.train(cfg, {name = "good", steps = 2})
zp.write_csv("results", {
  {run = "bad", ok = bad.ok, status = bad.status, n_steps = bad.n_steps, error = bad.error},
  {run = "good", ok = good.ok, status = good.status, n_steps = good.n_steps,
   error = good.error or "", final_loss = good.final_loss},
  {run = "cfg:set", ok = ok, error = err},
}, {"run", "ok", "status", "n_steps", "final_loss", "error"})
