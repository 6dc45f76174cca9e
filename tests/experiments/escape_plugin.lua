-- must fail: a plugin path inside the output directory (a file the script wrote, or could
-- have) is refused before anything is loaded
local written = zp.write_csv("evil.so", {{a = 1}}, {"a"}) -- "evil.so.csv"
local cfg = zp.config("../../examples/tiny.toml")
cfg:set("zero.plugin", zp.out_dir .. "/" .. written)
zp.plan(cfg, {world = 2})
