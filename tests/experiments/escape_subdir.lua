-- must fail: no '/' in output names, not even below the output directory
zp.plot_lines("a/b", {series = {{label = "x", y = {1, 2, 3}}}})
