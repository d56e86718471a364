-- name: beaconing
-- title: Destinations contacted like clockwork
-- description: Per model, destinations (host names) that most of the model's devices contact again and again at regular intervals within a boot: at least min_connections connections whose gaps vary by at most max_cv of their mean (coefficient of variation). A timer, not a person, drives such traffic: heartbeats, polling, telemetry. Uses the connection timing agents report per name and boot (measured over all of the name's addresses; records from agents that do not report it are left out).
-- param: min_connections = 5 | connections to the destination within one boot
-- param: max_cv = 0.1 | largest coefficient of variation of the gaps between them
-- param: min_share = 0.5 | share of the model's devices that must show the pattern
-- param: min_devices = 5 | fewest distinct devices that must show it
-- columns: vendor, model, domain, devices, model_devices, share, interval_s, cv, sources
-- public: interval_s, cv
-- needs: connections, interval_mean_s, interval_cv
WITH regular AS (
  -- One row per device, boot and name. The records of a name's addresses
  -- carry the name's gaps (agents measure them over all of its addresses),
  -- and their connections add up. Records with no gap to measure (a name
  -- contacted once in its report, a DNS lookup) say nothing of a timer and
  -- are left out before grouping, which spares grouping every record.
  SELECT vendor, model, device_pseudonym, domain,
         max(interval_mean_s) AS interval_mean_s, max(interval_cv) AS interval_cv,
         min(coalesce(source, 'unspecified')) AS source
  FROM flows
  WHERE domain IS NOT NULL AND interval_mean_s > 0 AND interval_cv IS NOT NULL AND connections IS NOT NULL
  GROUP BY vendor, model, device_pseudonym, boot_pseudonym, domain
  HAVING sum(connections) >= ${min_connections}
     AND max(interval_cv) <= ${max_cv}
),
-- Devices whose records carry connection timing (a DNS server's log, the
-- iOS report and agents that do not report it do not).
model_devices AS (
  SELECT vendor, model, count(DISTINCT device_pseudonym) AS n
  FROM flows
  WHERE interval_mean_s IS NOT NULL
  GROUP BY vendor, model
)
SELECT r.vendor, r.model, r.domain,
       count(DISTINCT r.device_pseudonym) AS devices, m.n AS model_devices,
       round(CAST(count(DISTINCT r.device_pseudonym) AS DOUBLE) / m.n, 3) AS share,
       round(median(r.interval_mean_s), 1) AS interval_s,
       round(median(r.interval_cv), 3) AS cv, array_to_string(array_sort(array_agg(DISTINCT r.source)), ', ') AS sources
FROM regular r
JOIN model_devices m ON m.vendor = r.vendor AND m.model = r.model
GROUP BY r.vendor, r.model, r.domain, m.n
HAVING count(DISTINCT r.device_pseudonym) >= ${min_devices}
   AND CAST(count(DISTINCT r.device_pseudonym) AS DOUBLE) / m.n >= ${min_share}
ORDER BY share DESC, devices DESC, r.vendor, r.model, r.domain
