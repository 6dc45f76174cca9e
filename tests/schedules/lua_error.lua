-- lua_error.lua (test input, rejected): a runtime error on stage 1 (line 7: a typo'd
-- constructor), which must come back with the file, the line and the stage.
function schedule(stages, micro_batches, stage_id, chunks)
  local l = {}
  for mb = 0, micro_batches - 1 do
    if stage_id == 1 then
      l[#l + 1] = FWDD(mb)
    end
  end
  return l
end
