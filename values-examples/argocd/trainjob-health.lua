-- Argo CD health check for trainer.kubeflow.org/TrainJob (Kubeflow Trainer v2).
-- Install: argocd-cm key resource.customizations.health.trainer.kubeflow.org_TrainJob
-- (see argocd-cm.yaml next to this file). Conditions are read in order of precedence:
--   Failed -> Degraded, Complete -> Healthy, Suspended -> Suspended,
--   anything else (or no status yet) -> Progressing.
-- The trainer sets only these three condition types (trainjob_types.go of kubeflow/trainer
-- v2.3.0); progress comes from status.jobsStatus, one entry per replicated job of the JobSet.
local hs = {}

local function jobs(status)
  -- "initializer 1 succeeded, node 2 active" from status.jobsStatus, in the listed order
  if status == nil or status.jobsStatus == nil then
    return ""
  end
  local parts = {}
  for _, js in ipairs(status.jobsStatus) do
    local counts = {}
    for _, key in ipairs({"active", "ready", "succeeded", "failed", "suspended"}) do
      if js[key] ~= nil and js[key] > 0 then
        table.insert(counts, js[key] .. " " .. key)
      end
    end
    if js.name ~= nil and #counts > 0 then
      table.insert(parts, js.name .. " " .. table.concat(counts, " "))
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
  {"Failed", "Degraded", "the TrainJob failed"},
  {"Complete", "Healthy", "the TrainJob completed"},
  {"Suspended", "Suspended", "the TrainJob is suspended"},
}
for _, state in ipairs(states) do
  local condition = current[state[1]]
  if condition ~= nil then
    hs.status = state[2]
    hs.message = state[1] .. ": " .. describe(condition, state[3]) .. jobs(obj.status)
    return hs
  end
end
hs.status = "Progressing"
local progress = jobs(obj.status)
if progress == "" then
  hs.message = "Waiting for the trainer to start the TrainJob"
else
  hs.message = "Running" .. progress
end
return hs
