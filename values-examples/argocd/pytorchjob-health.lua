-- Argo CD health check for kubeflow.org/PyTorchJob (Kubeflow Training Operator v1).
-- Install: argocd-cm key resource.customizations.health.kubeflow.org_PyTorchJob
-- (see argocd-cm.yaml next to this file). Conditions are read in order of precedence:
--   Failed -> Degraded, Succeeded -> Healthy, Suspended -> Suspended,
--   Restarting / Running / Created (or no status yet) -> Progressing.
local hs = {}

local function replicas(status)
  -- "Master 1 active, Worker 2 active 1 failed" from status.replicaStatuses
  if status == nil or status.replicaStatuses == nil then
    return ""
  end
  local names = {}
  for name, _ in pairs(status.replicaStatuses) do
    table.insert(names, name)
  end
  table.sort(names)
  local parts = {}
  for _, name in ipairs(names) do
    local rs = status.replicaStatuses[name]
    local counts = {}
    for _, key in ipairs({"active", "succeeded", "failed"}) do
      if rs[key] ~= nil and rs[key] > 0 then
        table.insert(counts, rs[key] .. " " .. key)
      end
    end
    if #counts > 0 then
      table.insert(parts, name .. " " .. table.concat(counts, " "))
    end
  end
  if #parts == 0 then
    return ""
  end
  return " (" .. table.concat(parts, ", ") .. ")"
end

local function describe(condition, fallback)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  if condition.reason ~= nil and condition.reason ~= "" then
    return condition.reason
  end
  return fallback
end

local current = {}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.status == "True" and condition.type ~= nil then
      current[condition.type] = condition
    end
  end
end

-- condition type, Argo CD status, message when the condition has none; first match wins
local states = {
  {"Failed", "Degraded", "the PyTorchJob failed"},
  {"Succeeded", "Healthy", "the PyTorchJob completed"},
  {"Suspended", "Suspended", "the PyTorchJob is suspended"},
  {"Restarting", "Progressing", "a replica is restarting"},
  {"Running", "Progressing", "the PyTorchJob is running"},
  {"Created", "Progressing", "waiting for pods"},
}
for _, state in ipairs(states) do
  local condition = current[state[1]]
  if condition ~= nil then
    hs.status = state[2]
    hs.message = state[1] .. ": " .. describe(condition, state[3]) .. replicas(obj.status)
    return hs
  end
end
hs.status = "Progressing"
hs.message = "Waiting for the training operator to pick up the PyTorchJob"
return hs
