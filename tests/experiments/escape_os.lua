-- must fail: the sandbox has no os library
os.execute("touch " .. zp.args.target)
