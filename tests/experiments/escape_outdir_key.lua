-- must fail: train.out_dir is chosen by zp.train (inside the output directory)
local cfg = zp.config("../../examples/tiny.toml")
cfg:set("train.out_dir", zp.args.target)
