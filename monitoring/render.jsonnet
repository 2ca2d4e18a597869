// The files render.sh writes into rendered/ (jsonnet -m ... -S).
local mixin = import 'mixin.libsonnet';
local yaml(v) = std.manifestYamlDoc(v, indent_array_in_object=true, quote_keys=false);
{
  'alerts.yaml': yaml(mixin.prometheusAlerts),
  'rules.yaml': yaml(mixin.prometheusRules),
} + {
  ['dashboards/' + name]: std.manifestJsonEx(mixin.grafanaDashboards[name], '  ') + '\n'
  for name in std.objectFields(mixin.grafanaDashboards)
}
