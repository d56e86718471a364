-- name: boot_phone_home
-- title: Vendor destinations contacted right after boot
-- description: (model, registrable domain) pairs that most of a model's devices contact within the first seconds after boot, where the domain belongs to that vendor's world (its devices make up most of the domain's contacting devices) rather than being contacted across vendors like a time server or a connectivity check. A destination the traffic did not name counts under its unusual port (tcp/8886 (unnamed)) or its address's network (203.0.113.0/24 (unnamed)).
-- param: window_s = 60 | seconds after boot that count as "at boot"
-- param: min_share = 0.5 | share of the model's devices that must contact the domain within the window
-- param: min_devices = 5 | fewest distinct devices that must contact it
-- param: min_vendor_share = 0.75 | share of all devices contacting the domain (at any time) that must be of this vendor
-- columns: vendor, model, domain, hosts, devices, model_devices, share, median_s, vendor_share, consent, sources
-- public: median_s
-- needs: seconds_since_boot
-- A destination no name was seen for (no DNS answer, SNI or Host) is keyed
-- by unnamed_destination: its unusual port, else its address's network.
WITH contacts AS (
  SELECT vendor, model, device_pseudonym, consent,
         CASE WHEN domain IS NULL THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR)) ELSE domain END AS domain,
         CASE WHEN domain IS NULL THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR))
              ELSE registrable_domain(domain) END AS reg,
         boot_pseudonym, seconds_since_boot, coalesce(source, 'unspecified') AS source
  FROM flows
  WHERE seconds_since_boot IS NOT NULL
),
-- Devices whose records say when after boot they came (a DNS server's log
-- or the iOS report does not).
model_devices AS (
  SELECT vendor, model, count(DISTINCT device_pseudonym) AS n
  FROM flows
  WHERE seconds_since_boot IS NOT NULL
  GROUP BY vendor, model
),
-- One row per device and registrable domain it contacted, with its earliest
-- contact after boot: the device counts below all come from these rows.
reached AS (
  SELECT vendor, model, reg, device_pseudonym, min(seconds_since_boot) AS first_s
  FROM contacts
  WHERE reg IS NOT NULL
  GROUP BY vendor, model, reg, device_pseudonym
),
per_model AS (
  SELECT vendor, model, reg, count(*) AS reached,
         count(*) FILTER (WHERE first_s <= ${window_s}) AS devices
  FROM reached
  GROUP BY vendor, model, reg
),
reach AS (
  SELECT reg, vendor, sum(reached) AS d
  FROM per_model
  GROUP BY reg, vendor
),
reach_total AS (
  SELECT reg, sum(reached) AS total
  FROM per_model
  GROUP BY reg
),
-- The pairs that pass every test. Only these get the columns that need
-- every contact (host names, consent labels, the median first contact).
found AS (
  SELECT p.vendor, p.model, p.reg, p.devices, m.n AS model_devices, r.d, t.total
  FROM per_model p
  JOIN model_devices m ON m.vendor = p.vendor AND m.model = p.model
  JOIN reach r ON r.reg = p.reg AND r.vendor = p.vendor
  JOIN reach_total t ON t.reg = p.reg
  WHERE p.devices >= ${min_devices}
    AND CAST(p.devices AS DOUBLE) / m.n >= ${min_share}
    AND CAST(r.d AS DOUBLE) / t.total >= ${min_vendor_share}
),
early AS (
  SELECT c.vendor, c.model, c.reg,
         array_to_string(array_sort(array_agg(DISTINCT c.domain)), ', ') AS hosts,
         array_to_string(array_sort(array_agg(DISTINCT c.consent)), ' | ') AS consent,
         array_to_string(array_sort(array_agg(DISTINCT c.source)), ', ') AS sources
  FROM contacts c
  JOIN found f ON f.vendor = c.vendor AND f.model = c.model AND f.reg = c.reg
  WHERE c.seconds_since_boot <= ${window_s}
  GROUP BY c.vendor, c.model, c.reg
),
-- Each boot's first contact within the window: the median is over boots,
-- as on the dashboard, so a device that contacts the domain every few
-- seconds after boot weighs as much as one that contacts it once.
boot_first AS (
  SELECT c.vendor, c.model, c.reg, min(c.seconds_since_boot) AS first_s
  FROM contacts c
  JOIN found f ON f.vendor = c.vendor AND f.model = c.model AND f.reg = c.reg
  WHERE c.seconds_since_boot <= ${window_s}
  GROUP BY c.vendor, c.model, c.reg, c.device_pseudonym, c.boot_pseudonym
),
first_contact AS (
  SELECT vendor, model, reg, median(first_s) AS median_s
  FROM boot_first
  GROUP BY vendor, model, reg
)
SELECT f.vendor, f.model, f.reg AS domain, e.hosts, f.devices, f.model_devices,
       round(CAST(f.devices AS DOUBLE) / f.model_devices, 3) AS share,
       round(b.median_s, 1) AS median_s,
       round(CAST(f.d AS DOUBLE) / f.total, 3) AS vendor_share,
       e.consent, e.sources
FROM found f
JOIN early e ON e.vendor = f.vendor AND e.model = f.model AND e.reg = f.reg
JOIN first_contact b ON b.vendor = f.vendor AND b.model = f.model AND b.reg = f.reg
ORDER BY share DESC, devices DESC, f.vendor, f.model, domain