-- Argo CD health of a kcmail.io MailConfig, read from the status kcmail writes.
-- Written for Argo CD's sandbox for argocd-cm scripts: Lua 5.1 with only the base, table and package
-- libraries (os only as require("os"), with time and date), so no string functions.
local hs = {}

local function condition(conditions, wanted)
  for _, c in ipairs(conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local function describe(c)
  if c.message ~= nil and c.message ~= "" then
    return (c.reason or c.type) .. ": " .. c.message
  end
  return c.reason or c.type
end

local status = obj.status or {}
local ready = condition(status.conditions, "Ready")

-- For an object being deleted Argo CD answers Progressing "Pending deletion…" itself; from 3.6 on it
-- takes this script's status instead when the script sets deletionMessage (3.5 and earlier never ask).
-- deletionPolicy Clear waits for Keycloak; say why instead of an endless "Pending deletion".
if obj.metadata.deletionTimestamp ~= nil and ready ~= nil and ready.status == "False"
    and ready.reason == "DeletionBlocked" then
  hs.status = "Degraded"
  hs.deletionMessage = describe(ready)
  return hs
end

-- A status about an older spec says nothing about this one.
if status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for kcmail to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true: kcmail neither writes to Keycloak nor probes"
  return hs
end

local stalled = condition(status.conditions, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end

if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

local reconciling = condition(status.conditions, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling)
  return hs
end

hs.status = "Progressing"
hs.message = "Waiting for kcmail to report Ready"
return hs
