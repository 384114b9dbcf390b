-- Argo CD health of a kcmail.io KeycloakConnection or ClusterKeycloakConnection: can kcmail reach
-- Keycloak and log in. Written for Argo CD's sandbox for argocd-cm scripts: Lua 5.1 with only the base,
-- table and package libraries (os only as require("os"), with time and date), so no string functions.
-- For a connection being deleted Argo CD answers Progressing "Pending deletion…" itself.
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
-- A status about an older spec says nothing about this one.
if status.observedGeneration == nil or status.observedGeneration ~= obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for kcmail to observe generation " .. tostring(obj.metadata.generation)
  return hs
end

local ready = condition(status.conditions, "Ready")
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

hs.status = "Progressing"
hs.message = "Waiting for kcmail to check the connection"
return hs
