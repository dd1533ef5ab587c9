-- Argo CD health check for compose.nextunicorn.dev/CompositionJob.
-- Reads the conditions the operator keeps in status.conditions (types Accepted, Queued, Started,
-- Succeeded, Failed, Suspended): Failed -> Degraded, Succeeded -> Healthy,
-- Suspended -> Suspended, anything else (no status yet, queued, starting, running) -> Progressing.
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the operator to accept the job"

if obj.status == nil then
  return hs
end

local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind and c.status == "True" then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

-- A status older than the spec says nothing about the spec: wait for the operator.
local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local failed = condition("Failed")
if failed ~= nil then
  hs.status = "Degraded"
  hs.message = describe(failed, "Failed")
  return hs
end

local succeeded = condition("Succeeded")
if succeeded ~= nil then
  hs.status = "Healthy"
  hs.message = describe(succeeded, "Completed")
  if obj.status.result ~= nil and obj.status.result.url ~= nil then
    hs.message = hs.message .. " (" .. obj.status.result.url .. ")"
  end
  return hs
end

local suspended = condition("Suspended")
if suspended ~= nil then
  hs.status = "Suspended"
  hs.message = describe(suspended, "Suspended")
  return hs
end

for _, kind in ipairs({ "Started", "Queued", "Accepted" }) do
  local c = condition(kind)
  if c ~= nil then
    hs.message = describe(c, kind)
    return hs
  end
end
if obj.status.phase ~= nil then
  hs.message = obj.status.phase
end
return hs
