-- must fail: a run name is a plain name too (its directory is OUT/runs/<name>)
local cfg = zp.config("../../examples/tiny.toml")
zp.train(cfg, {name = "../../escape_run", steps = 1})
