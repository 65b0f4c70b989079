-- wrk script for `make compare`: each thread asks for @LIMIT@ distinct keys once, then one
-- cached key over and over (so the run fills the cache with exactly 2 x @LIMIT@ entries).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local n = 0
function request()
  n = n + 1
  if n > @LIMIT@ then
    return wrk.format("GET", "/fill/" .. tid .. "-1")
  end
  return wrk.format("GET", "/fill/" .. tid .. "-" .. n)
end
