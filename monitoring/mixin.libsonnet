// logwarden monitoring mixin: Prometheus alerting and recording rules and a Grafana
// dashboard for a fleet of logwarden daemons, in the usual mixin shape
// (prometheusAlerts, prometheusRules, grafanaDashboards). Rendered by render.sh into
// rendered/; override _config to fit your scrape setup.
{
  _config+:: {
    // Selects the logwarden scrape targets.
    selector: 'job="logwarden"',
    // The label naming a host: the scrape target's `instance`, or a label relabelled to
    // the host name (logwarden's own `host:`).
    hostLabel: 'instance',
    // How long a critical incident may stay unacknowledged.
    criticalAckSLA: '15m',
    // Window of the response-time percentiles and means (incidents are rare events).
    kpiWindow: '1d',
    dashboardUid: 'logwarden-fleet',
  },

  local c = self._config,
  local kpis = [
    { name: 'detect', title: 'Time to detect', help: 'first evidence line to incident opened' },
    { name: 'acknowledge', title: 'Time to acknowledge', help: 'opened to acknowledged (MTTA)' },
    { name: 'contain', title: 'Time to contain', help: 'opened to contained' },
    { name: 'resolve', title: 'Time to resolve', help: 'opened to closed (MTTR)' },
  ],
  // Quantiles as written in queries, and as named in recorded series.
  local quantiles = ['0.5', '0.9', '0.99'],
  local pct(q) = std.substr(q + '0', 2, 2),

  prometheusAlerts+:: {
    groups+: [{
      name: 'logwarden',
      rules: [
        {
          alert: 'LogwardenDown',
          expr: 'up{%(selector)s} == 0' % c,
          'for': '5m',
          labels: { severity: 'critical' },
          annotations: {
            summary: 'logwarden is down on {{ $labels.%(hostLabel)s }}' % c,
            description: 'Prometheus has not scraped logwarden on {{ $labels.%(hostLabel)s }} for 5 minutes: nothing on that host is being watched.' % c,
          },
        },
        {
          alert: 'LogwardenRuleReloadFailing',
          expr: 'increase(logwarden_rule_reload_failures_total{%(selector)s}[15m]) > 0' % c,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'A rule reload failed on {{ $labels.%(hostLabel)s }}' % c,
            description: 'A rule file is broken; the previous rules keep running. `logwarden check` names the file, line and reason.',
          },
        },
        {
          alert: 'LogwardenDeadLetters',
          expr: 'logwarden_notifications_dead_letters{%(selector)s} > 0' % c,
          'for': '5m',
          labels: { severity: 'warning' },
          annotations: {
            summary: '{{ $value }} notifications to {{ $labels.receiver }} given up on {{ $labels.%(hostLabel)s }}' % c,
            description: 'Notifications were kept as dead letters; list them with GET /api/v1/notifications/dead and re-send them once the receiver works.',
          },
        },
        {
          alert: 'LogwardenNotificationsFailing',
          expr: 'sum by (%(hostLabel)s, receiver) (rate(logwarden_notifications_total{%(selector)s, outcome=~"retried|dead|resend_failed"}[10m])) > 0' % c,
          'for': '15m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Notifications to {{ $labels.receiver }} keep failing on {{ $labels.%(hostLabel)s }}' % c,
            description: 'Deliveries to the receiver have failed for 15 minutes; notifications wait in the outbox and become dead letters after retry.max_age.',
          },
        },
        {
          alert: 'LogwardenSourceNotReading',
          expr: 'logwarden_files_watched{%(selector)s} == 0' % c,
          'for': '15m',
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Source {{ $labels.source }} reads no file on {{ $labels.%(hostLabel)s }}' % c,
            description: "None of the source's paths matches a readable file: its rules see nothing.",
          },
        },
        {
          alert: 'LogwardenJournalGap',
          expr: 'increase(logwarden_journal_gaps_total{%(selector)s}[30m]) > 0' % c,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'Journal source {{ $labels.source }} skipped entries on {{ $labels.%(hostLabel)s }}' % c,
            description: 'The journal rotated or vacuumed entries before logwarden read them: lines were lost to detection.',
          },
        },
        {
          alert: 'LogwardenCriticalIncidentUnacknowledged',
          expr: 'logwarden_incidents_open{%(selector)s, severity="critical", state="open"} > 0' % c,
          'for': c.criticalAckSLA,
          labels: { severity: 'critical' },
          annotations: {
            summary: 'A critical incident on {{ $labels.%(hostLabel)s }} is unacknowledged past %(criticalAckSLA)s' % c,
            description: 'Critical incidents have stayed open without acknowledgement longer than the SLA: `logwarden incidents list --severity critical --state open`.',
          },
        },
        {
          alert: 'LogwardenSLAMissed',
          // The incident's severity as `incident_severity`: the alert's own `severity` is
          // how urgent the alert is.
          expr: 'label_replace(sum by (%(hostLabel)s, severity, stage) (increase(logwarden_incident_sla_outcomes_total{%(selector)s, outcome="missed", drill="false"}[1h])) > 0, "incident_severity", "$1", "severity", "(.*)")' % c,
          labels: { severity: 'warning' },
          annotations: {
            summary: 'A {{ $labels.incident_severity }} incident on {{ $labels.%(hostLabel)s }} missed its {{ $labels.stage }} SLA' % c,
            description: 'An incident reached the {{ $labels.stage }} stage later than `slas:` allows for its severity; the population export (`logwarden audit export --format population`) names it.',
          },
        },
      ],
    }],
  },

  prometheusRules+:: {
    groups+: [{
      name: 'logwarden-kpis',
      interval: '1m',
      rules: std.flattenArrays([
        [
          {
            record: 'severity:logwarden_time_to_%s_seconds:p%s_%s' % [k.name, pct(q), c.kpiWindow],
            expr: 'histogram_quantile(%s, sum by (severity, le) (increase(logwarden_time_to_%s_seconds_bucket{%s, drill="false"}[%s])))' % [q, k.name, c.selector, c.kpiWindow],
          }
          for q in quantiles
        ] + [{
          record: 'severity:logwarden_time_to_%s_seconds:mean_%s' % [k.name, c.kpiWindow],
          expr: |||
            sum by (severity) (increase(logwarden_time_to_%(k)s_seconds_sum{%(s)s, drill="false"}[%(w)s]))
            /
            sum by (severity) (increase(logwarden_time_to_%(k)s_seconds_count{%(s)s, drill="false"}[%(w)s]))
          ||| % { k: k.name, s: c.selector, w: c.kpiWindow },
        }]
        for k in kpis
      ]) + [{
        // Share of stages reached within their SLA (`slas:` in the config), drills excluded.
        record: 'severity_stage:logwarden_incident_sla_outcomes:met_ratio_%s' % c.kpiWindow,
        expr: |||
          sum by (severity, stage) (increase(logwarden_incident_sla_outcomes_total{%(s)s, outcome="met", drill="false"}[%(w)s]))
          /
          sum by (severity, stage) (increase(logwarden_incident_sla_outcomes_total{%(s)s, drill="false"}[%(w)s]))
        ||| % { s: c.selector, w: c.kpiWindow },
      }],
    }],
  },

  // Grafana dashboard
  local sel = '%s, %s=~"$host"' % [c.selector, c.hostLabel],
  local target(expr, legend) = {
    datasource: { type: 'prometheus', uid: '${datasource}' },
    expr: expr,
    legendFormat: legend,
    refId: 'A',
  },
  local panel(id, title, description, unit, targets, x, y, w=12, h=8, stack=false) = {
    id: id,
    type: 'timeseries',
    title: title,
    description: description,
    datasource: { type: 'prometheus', uid: '${datasource}' },
    gridPos: { x: x, y: y, w: w, h: h },
    fieldConfig: {
      defaults: {
        unit: unit,
        custom: { stacking: { mode: if stack then 'normal' else 'none' } },
      },
      overrides: [],
    },
    options: { legend: { displayMode: 'table', placement: 'bottom' }, tooltip: { mode: 'multi' } },
    targets: [t { refId: std.char(65 + i) } for i in std.range(0, std.length(targets) - 1) for t in [targets[i]]],
  },
  local row(id, title, y) = {
    id: id,
    type: 'row',
    title: title,
    collapsed: false,
    gridPos: { x: 0, y: y, w: 24, h: 1 },
    panels: [],
  },
  local kpiPanel(i, k) = panel(
    10 + i,
    k.title,
    'Seconds, %s, over the trailing %s, per severity (drills excluded).' % [k.help, c.kpiWindow],
    's',
    [
      target('histogram_quantile(%s, sum by (severity, le) (increase(logwarden_time_to_%s_seconds_bucket{%s, drill="false"}[%s])))' % [q, k.name, sel, c.kpiWindow], 'p%s {{severity}}' % pct(q))
      for q in ['0.5', '0.9']
    ],
    (i % 2) * 12,
    1 + std.floor(i / 2) * 8,
  ),

  grafanaDashboards+:: {
    'logwarden.json': {
      uid: c.dashboardUid,
      title: 'logwarden / Fleet',
      tags: ['logwarden'],
      timezone: 'utc',
      editable: true,
      schemaVersion: 39,
      version: 1,
      refresh: '1m',
      time: { from: 'now-24h', to: 'now' },
      templating: {
        list: [
          {
            name: 'datasource',
            label: 'Data source',
            type: 'datasource',
            query: 'prometheus',
            current: {},
            hide: 0,
          },
          {
            name: 'host',
            label: 'Host',
            type: 'query',
            datasource: { type: 'prometheus', uid: '${datasource}' },
            query: { query: 'label_values(logwarden_build_info{%s}, %s)' % [c.selector, c.hostLabel], refId: 'host' },
            definition: 'label_values(logwarden_build_info{%s}, %s)' % [c.selector, c.hostLabel],
            refresh: 2,
            multi: true,
            includeAll: true,
            allValue: '.*',
            current: { selected: true, text: ['All'], value: ['$__all'] },
            sort: 1,
            hide: 0,
          },
        ],
      },
      annotations: { list: [] },
      links: [],
      panels: [row(1, 'Response times (KPIs)', 0)]
              + [kpiPanel(i, kpis[i]) for i in std.range(0, std.length(kpis) - 1)]
              + [
                row(2, 'Incidents', 17),
                panel(20, 'Open incidents by state', 'Incidents not yet closed, by lifecycle state.', 'short', [
                  target('sum by (state) (logwarden_incidents_open{%s})' % sel, '{{state}}'),
                ], 0, 18, stack=true),
                panel(21, 'Open incidents by severity', 'Incidents not yet closed, by severity.', 'short', [
                  target('sum by (severity) (logwarden_incidents_open{%s})' % sel, '{{severity}}'),
                ], 12, 18, stack=true),
                panel(22, 'Incidents opened per rule', 'Incidents opened in each interval, by rule.', 'short', [
                  target('sum by (rule) (increase(logwarden_incidents_opened_total{%s}[$__rate_interval]))' % sel, '{{rule}}'),
                ], 0, 26, stack=true),
                panel(23, 'SLA outcomes', 'Lifecycle stages reached within (met) or after (missed) the SLA `slas:` sets for the severity, per interval (drills excluded).', 'short', [
                  target('sum by (severity, stage, outcome) (increase(logwarden_incident_sla_outcomes_total{%s, drill="false"}[$__rate_interval]))' % sel, '{{severity}} {{stage}} {{outcome}}'),
                ], 12, 26, stack=true),
                row(3, 'Notifications', 34),
                panel(30, 'Notification failures', 'Failed attempts (retried), given up (dead) and failed re-sends per second, by receiver.', 'reqps', [
                  target('sum by (receiver, outcome) (rate(logwarden_notifications_total{%s, outcome=~"retried|dead|resend_failed"}[$__rate_interval]))' % sel, '{{receiver}} {{outcome}}'),
                ], 0, 35),
                panel(31, 'Dead letters and outbox', 'Notifications kept as dead letters, and waiting in the outbox, by receiver.', 'short', [
                  target('sum by (receiver) (logwarden_notifications_dead_letters{%s})' % sel, 'dead {{receiver}}'),
                  target('sum by (receiver) (logwarden_outbox_pending{%s})' % sel, 'pending {{receiver}}'),
                ], 12, 35),
                panel(32, 'Delivered notifications', 'Notifications delivered and alerts re-sent per second, by receiver.', 'reqps', [
                  target('sum by (receiver, outcome) (rate(logwarden_notifications_total{%s, outcome=~"delivered|resent"}[$__rate_interval]))' % sel, '{{receiver}} {{outcome}}'),
                ], 0, 43),
                panel(33, 'Delivery latency p90', 'Seconds from a notification being written to its delivery, retries included.', 's', [
                  target('histogram_quantile(0.9, sum by (receiver, le) (rate(logwarden_notification_delivery_seconds_bucket{%s}[$__rate_interval])))' % sel, '{{receiver}}'),
                ], 12, 43),
                row(4, 'Sources', 51),
                panel(40, 'Lines read', 'Log lines read per second, by source.', 'short', [
                  target('sum by (source) (rate(logwarden_lines_read_total{%s}[$__rate_interval]))' % sel, '{{source}}'),
                ], 0, 52),
                panel(41, 'Source lag', "Seconds from the newest line's own time to its evaluation, by source (the worst host).", 's', [
                  target('max by (source) (logwarden_source_lag_seconds{%s})' % sel, '{{source}}'),
                ], 12, 52),
                panel(42, 'Files watched and journal gaps', 'Files tailed per source, and journal entries lost to rotation before they were read.', 'short', [
                  target('sum by (source) (logwarden_files_watched{%s})' % sel, 'files {{source}}'),
                  target('sum by (source) (increase(logwarden_journal_gaps_total{%s}[$__rate_interval]))' % sel, 'gaps {{source}}'),
                ], 0, 60),
                panel(43, 'Rules', 'Rules loaded, and refused reloads (the old rules kept running).', 'short', [
                  target('sum by (%s) (logwarden_rules_loaded{%s})' % [c.hostLabel, sel], 'loaded {{%s}}' % c.hostLabel),
                  target('sum by (%s) (increase(logwarden_rule_reload_failures_total{%s}[$__rate_interval]))' % [c.hostLabel, sel], 'reload failures {{%s}}' % c.hostLabel),
                ], 12, 60),
              ],
    },
  },
}
