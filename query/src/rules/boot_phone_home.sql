-- name: boot_phone_home
-- title: Vendor destinations contacted right after boot
-- description: (model, registrable domain) pairs that most of a model's devices contact within the first seconds after boot, where the domain belongs to that vendor's world (its devices make up most of the domain's contacting devices) rather than being contacted across vendors like a time server or a connectivity check.
-- param: window_s = 60 | seconds after boot that count as "at boot"
-- param: min_share = 0.5 | share of the model's devices that must contact the domain within the window
-- param: min_devices = 5 | fewest distinct devices that must contact it
-- param: min_vendor_share = 0.75 | share of all devices contacting the domain (at any time) that must be of this vendor
-- columns: vendor, model, domain, hosts, devices, model_devices, share, median_s, vendor_share, consent
WITH contacts AS (
  SELECT vendor, model, device_pseudonym, consent, domain,
         registrable_domain(domain) AS reg, seconds_since_boot
  FROM flows
  WHERE domain IS NOT NULL
),
model_devices AS (
  SELECT vendor, model, count(DISTINCT device_pseudonym) AS n
  FROM flows
  GROUP BY vendor, model
),
early AS (
  SELECT vendor, model, reg,
         count(DISTINCT device_pseudonym) AS devices,
         median(seconds_since_boot) AS median_s,
         array_to_string(array_sort(array_agg(DISTINCT domain)), ', ') AS hosts,
         array_to_string(array_sort(array_agg(DISTINCT consent)), ' | ') AS consent
  FROM contacts
  WHERE seconds_since_boot <= ${window_s} AND reg IS NOT NULL
  GROUP BY vendor, model, reg
),
reach AS (
  SELECT reg, vendor, count(DISTINCT device_pseudonym) AS d
  FROM contacts
  WHERE reg IS NOT NULL
  GROUP BY reg, vendor
),
reach_total AS (
  SELECT reg, sum(d) AS total
  FROM reach
  GROUP BY reg
)
SELECT e.vendor, e.model, e.reg AS domain, e.hosts, e.devices, m.n AS model_devices,
       round(CAST(e.devices AS DOUBLE) / m.n, 3) AS share,
       round(e.median_s, 1) AS median_s,
       round(CAST(r.d AS DOUBLE) / t.total, 3) AS vendor_share,
       e.consent
FROM early e
JOIN model_devices m ON e.vendor = m.vendor AND e.model = m.model
JOIN reach r ON r.reg = e.reg AND r.vendor = e.vendor
JOIN reach_total t ON t.reg = e.reg
WHERE e.devices >= ${min_devices}
  AND CAST(e.devices AS DOUBLE) / m.n >= ${min_share}
  AND CAST(r.d AS DOUBLE) / t.total >= ${min_vendor_share}
ORDER BY share DESC, devices DESC, e.vendor, e.model, domain
