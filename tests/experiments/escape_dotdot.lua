-- must fail: output names are plain names inside the output directory
zp.write_csv("../escape_dotdot", {{a = 1}}, {"a"})
