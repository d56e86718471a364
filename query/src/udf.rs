//! User-defined SQL functions:
//!
//! - `registrable_domain(host)`: the registrable domain ("eTLD+1") by the
//!   public suffix list, e.g. `api.account.xiaomi.com` → `xiaomi.com`,
//!   `a.b.example.co.uk` → `example.co.uk`; NULL for NULL, for addresses
//!   and for names that are themselves a public suffix.
//! - `is_private_ip(ip)`: true for the addresses the agent never reports
//!   and the collector refuses (`leakwatch_core::address::is_non_public`:
//!   private, loopback, link-local, multicast, carrier-grade NAT, reserved,
//!   unique-local, and IPv6 forms carrying such an IPv4 address); NULL when
//!   the text is not an address.
//! - `ip_in_cidr(ip, cidr)`: true when the address lies in the CIDR block
//!   (`10.0.0.0/8`, `2001:db8::/32`); NULL when either does not parse.
//! - `unnamed_destination(transport, dst_ip, dst_port)`: the key that
//!   groups a destination the traffic did not name (no DNS answer, SNI,
//!   Host or certificate) across the addresses it rotates through: on an
//!   unusual port the port (`tcp/8886 (unnamed)`: a Tuya plug reached its
//!   cloud at addresses in five /24 networks over 20 boots, always on port
//!   8886), on a well-known one the address's /24 (`203.0.113.0/24
//!   (unnamed)`; /48 for IPv6). `dst_port` is text (`CAST(dst_port AS
//!   VARCHAR)`); NULL when the address or port does not parse.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanBuilder, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::exec_err;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// Which function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    RegistrableDomain,
    IsPrivateIp,
    IpInCidr,
    UnnamedDestination,
}

/// A row-by-row function over string arguments.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct StringFunction {
    kind: Kind,
    signature: Signature,
}

/// Every leakwatch UDF.
pub fn all() -> Vec<ScalarUDF> {
    [(Kind::RegistrableDomain, 1), (Kind::IsPrivateIp, 1), (Kind::IpInCidr, 2), (Kind::UnnamedDestination, 3)]
        .into_iter()
        .map(|(kind, args)| {
            ScalarUDF::new_from_impl(StringFunction { kind, signature: Signature::string(args, Volatility::Immutable) })
        })
        .collect()
}

/// The registrable domain of `host`.
pub fn registrable_domain(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    psl::domain_str(&host).map(str::to_string)
}

/// True for an address the agent never reports and the collector refuses
/// (the one rule of `leakwatch_core::address`).
pub fn is_private_ip(ip: IpAddr) -> bool {
    leakwatch_core::address::is_non_public(ip)
}

/// Whether `ip` lies in `cidr`; `None` when `cidr` does not parse.
pub fn ip_in_cidr(ip: IpAddr, cidr: &str) -> Option<bool> {
    let (net, bits) = cidr.trim().split_once('/')?;
    let net: IpAddr = net.parse().ok()?;
    let bits: u32 = bits.parse().ok()?;
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            Some(u32::from(a) & mask == u32::from(n) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            Some(u128::from(a) & mask == u128::from(n) & mask)
        }
        (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => Some(false),
        _ => None,
    }
}

pub use leakwatch_core::address::unnamed_destination;

/// `array` as one of the string types, read in place (other types are
/// cast to Utf8 first).
fn strings(array: &ArrayRef) -> datafusion::error::Result<ArrayRef> {
    Ok(match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => array.clone(),
        _ => arrow::compute::cast(array, &DataType::Utf8)?,
    })
}

/// A string column's values (Utf8, LargeUtf8 or views), read in place.
pub(crate) enum Strings<'a> {
    Utf8(&'a StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

impl<'a> Strings<'a> {
    pub(crate) fn of(array: &'a ArrayRef) -> datafusion::error::Result<Self> {
        use arrow::array::AsArray as _;
        Ok(match array.data_type() {
            DataType::Utf8 => Self::Utf8(array.as_string::<i32>()),
            DataType::LargeUtf8 => Self::Large(array.as_string::<i64>()),
            DataType::Utf8View => Self::View(array.as_string_view()),
            other => return exec_err!("expected a string argument, not {other}"),
        })
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Utf8(a) => a.len(),
            Self::Large(a) => a.len(),
            Self::View(a) => a.len(),
        }
    }

    /// The value at `i`; `None` when NULL.
    pub(crate) fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            Self::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Self::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Self::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

impl ScalarUDFImpl for StringFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::RegistrableDomain => "registrable_domain",
            Kind::IsPrivateIp => "is_private_ip",
            Kind::IpInCidr => "ip_in_cidr",
            Kind::UnnamedDestination => "unnamed_destination",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(match self.kind {
            Kind::RegistrableDomain | Kind::UnnamedDestination => DataType::Utf8,
            Kind::IsPrivateIp | Kind::IpInCidr => DataType::Boolean,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arrays = arrays.iter().map(strings).collect::<datafusion::error::Result<Vec<_>>>()?;
        let columns = arrays.iter().map(Strings::of).collect::<datafusion::error::Result<Vec<_>>>()?;
        let rows = if all_scalar { 1 } else { args.number_rows };
        let value = |c: usize, row: usize| -> Option<&str> {
            let col = &columns[c];
            let i = if col.len() == 1 { 0 } else { row };
            if i < col.len() { col.get(i) } else { None }
        };
        let out: ArrayRef = match self.kind {
            Kind::RegistrableDomain => {
                // Stored rows are sorted by domain and a batch holds few
                // distinct names: look each one up once per batch, and
                // reuse the last answer for a run of the same name.
                let mut b = StringBuilder::with_capacity(rows, rows * 12);
                let mut seen: HashMap<&str, Option<String>> = HashMap::new();
                let mut last: Option<(&str, Option<&str>)> = None;
                for row in 0..rows {
                    let Some(host) = value(0, row) else {
                        b.append_null();
                        continue;
                    };
                    let domain = match last {
                        Some((h, d)) if h == host => d,
                        _ => {
                            let d = seen.entry(host).or_insert_with(|| registrable_domain(host)).as_deref();
                            last = Some((host, d));
                            d
                        }
                    };
                    b.append_option(domain);
                }
                Arc::new(b.finish())
            }
            Kind::UnnamedDestination => {
                let mut b = StringBuilder::with_capacity(rows, rows * 24);
                for row in 0..rows {
                    let ip = value(1, row).and_then(|s| s.trim().parse::<IpAddr>().ok());
                    let port = value(2, row).and_then(|s| s.trim().parse::<u16>().ok());
                    match (value(0, row), ip, port) {
                        (Some(transport), Some(ip), Some(port)) => {
                            b.append_value(unnamed_destination(transport, ip, port));
                        }
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::IsPrivateIp | Kind::IpInCidr => {
                let mut b = BooleanBuilder::with_capacity(rows);
                for row in 0..rows {
                    let ip = value(0, row).and_then(|s| s.trim().parse::<IpAddr>().ok());
                    b.append_option(match (self.kind, ip) {
                        (Kind::IsPrivateIp, Some(ip)) => Some(is_private_ip(ip)),
                        (Kind::IpInCidr, Some(ip)) => value(1, row).and_then(|c| ip_in_cidr(ip, c)),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
        };
        if all_scalar {
            Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_suffix_list_is_used() {
        assert_eq!(registrable_domain("api.account.xiaomi.com").as_deref(), Some("xiaomi.com"));
        assert_eq!(registrable_domain("a.b.example.co.uk").as_deref(), Some("example.co.uk"));
        assert_eq!(registrable_domain("co.uk"), None);
        assert_eq!(registrable_domain("8.8.8.8"), None);
    }

    #[tokio::test]
    async fn functions_read_each_string_type_with_runs_and_nulls() {
        let ctx = datafusion::prelude::SessionContext::new();
        for udf in all() {
            ctx.register_udf(udf);
        }
        for ty in ["Utf8", "LargeUtf8", "Utf8View"] {
            let sql = format!(
                "SELECT registrable_domain(arrow_cast(h, '{ty}')) AS d, is_private_ip(arrow_cast(ip, '{ty}')) AS p, \
                 ip_in_cidr(arrow_cast(ip, '{ty}'), '10.0.0.0/8') AS c \
                 FROM (VALUES ('a.xiaomi.com', '10.0.0.1'), ('a.xiaomi.com', '8.8.8.8'), ('b.xiaomi.com', NULL), \
                 (NULL, '10.1.1.1'), ('x.example.co.uk', 'fd00::1'), ('8.8.8.8', 'x'), ('a.xiaomi.com', '10.0.0.2')) \
                 AS t(h, ip)"
            );
            let batches = ctx.sql(&sql).await.expect("plan").collect().await.expect("run");
            assert_eq!(
                crate::format::render(&batches, crate::format::OutputFormat::Csv).expect("render"),
                "d,p,c\nxiaomi.com,true,true\nxiaomi.com,false,false\nxiaomi.com,,\n,true,true\n\
                 example.co.uk,true,false\n,,\nxiaomi.com,true,true\n",
                "{ty}"
            );
        }
    }

    /// `is_private_ip` in SQL answers as the agent's and the collector's
    /// rule on an address of every range the agent drops, and on public
    /// ones beside them (it answered false for 240.0.0.1, which the agent
    /// never sends and the collector refuses).
    #[tokio::test]
    async fn is_private_ip_agrees_with_the_agents_rule_on_every_range() {
        let ctx = datafusion::prelude::SessionContext::new();
        for udf in all() {
            ctx.register_udf(udf);
        }
        let (non_public, public) = leakwatch_core::address::EXAMPLES;
        for (ip, agent_drops) in non_public.iter().map(|ip| (ip, true)).chain(public.iter().map(|ip| (ip, false))) {
            assert_eq!(leakwatch_core::address::is_non_public(ip.parse().expect("ip")), agent_drops, "{ip}");
            let batches = ctx
                .sql(&format!("SELECT is_private_ip('{ip}') AS p"))
                .await
                .expect("plan")
                .collect()
                .await
                .expect("run");
            let csv = crate::format::render(&batches, crate::format::OutputFormat::Csv).expect("render");
            assert_eq!(csv, format!("p\n{agent_drops}\n"), "{ip}");
        }
    }

    #[test]
    fn unnamed_destinations_by_unusual_port_else_network() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // The Tuya plug's rotating cloud addresses share their port.
        for addr in ["52.58.1.2", "3.122.9.9", "18.185.1.1"] {
            assert_eq!(unnamed_destination("tcp", ip(addr), 8886), "tcp/8886 (unnamed)");
        }
        assert_eq!(unnamed_destination("tcp", ip("203.0.113.77"), 443), "203.0.113.0/24 (unnamed)");
        assert_eq!(unnamed_destination("udp", ip("203.0.113.77"), 8883), "203.0.113.0/24 (unnamed)");
        assert_eq!(unnamed_destination("tcp", ip("2001:db8:1:2::9"), 443), "2001:db8:1::/48 (unnamed)");
    }

    #[tokio::test]
    async fn unnamed_destination_in_sql() {
        let ctx = datafusion::prelude::SessionContext::new();
        for udf in all() {
            ctx.register_udf(udf);
        }
        let sql = "SELECT unnamed_destination(t, ip, CAST(p AS VARCHAR)) IS NULL AS n, \
                   unnamed_destination(t, ip, CAST(p AS VARCHAR)) AS k FROM (VALUES ('tcp', '52.58.1.2', 8886), \
                   ('tcp', '203.0.113.7', 443), ('tcp', 'x', 443), ('udp', '8.8.8.8', NULL)) AS v(t, ip, p)";
        let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
        assert_eq!(
            crate::format::render(&batches, crate::format::OutputFormat::Csv).expect("render"),
            "n,k\nfalse,tcp/8886 (unnamed)\nfalse,203.0.113.0/24 (unnamed)\ntrue,\ntrue,\n"
        );
    }

    #[test]
    fn address_predicates() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert!(is_private_ip(ip("192.168.1.2")) && is_private_ip(ip("fd00::1")) && is_private_ip(ip("100.64.0.1")));
        assert!(!is_private_ip(ip("8.8.8.8")) && !is_private_ip(ip("2606:4700::1")));
        assert_eq!(ip_in_cidr(ip("10.1.2.3"), "10.0.0.0/8"), Some(true));
        assert_eq!(ip_in_cidr(ip("11.1.2.3"), "10.0.0.0/8"), Some(false));
        assert_eq!(ip_in_cidr(ip("2001:db8::5"), "2001:db8::/32"), Some(true));
        assert_eq!(ip_in_cidr(ip("8.8.8.8"), "0.0.0.0/0"), Some(true));
        assert_eq!(ip_in_cidr(ip("8.8.8.8"), "2001:db8::/32"), Some(false));
        assert_eq!(ip_in_cidr(ip("8.8.8.8"), "10.0.0.0/33"), None);
        assert_eq!(ip_in_cidr(ip("8.8.8.8"), "nonsense"), None);
    }
}
