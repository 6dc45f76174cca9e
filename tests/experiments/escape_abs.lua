-- must fail: absolute paths are refused (zp.args.target is an absolute path)
zp.write_markdown(zp.args.target, {{a = 1}}, {"a"})
