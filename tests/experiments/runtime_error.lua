-- must fail with "runtime_error.lua:4: boom" and a traceback
local function explode(what)
  -- the error is raised on the next line
  error(what)
end
explode("boom")
