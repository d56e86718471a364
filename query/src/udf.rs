//! User-defined SQL functions.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// `registrable_domain(host)`: the registrable domain ("eTLD+1") of a host
/// name by the public suffix list, e.g. `api.account.xiaomi.com` →
/// `xiaomi.com`, `a.b.example.co.uk` → `example.co.uk`; NULL for NULL, for
/// addresses and for names that are themselves a public suffix.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct RegistrableDomain {
    signature: Signature,
}

impl RegistrableDomain {
    /// The UDF.
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self { signature: Signature::string(1, Volatility::Immutable) })
    }
}

/// The registrable domain of `host`.
pub fn registrable_domain(host: &str) -> Option<String> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    psl::domain_str(&host).map(str::to_string)
}

impl ScalarUDFImpl for RegistrableDomain {
    fn name(&self) -> &str {
        "registrable_domain"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::error::Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("registrable_domain takes one argument");
        };
        match arg {
            ColumnarValue::Scalar(v) => {
                let text = match v {
                    ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => s.clone(),
                    ScalarValue::Null => None,
                    other => return exec_err!("registrable_domain expects a string, got {}", other.data_type()),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(text.as_deref().and_then(registrable_domain))))
            }
            ColumnarValue::Array(array) => {
                let cast = arrow::compute::cast(array, &DataType::Utf8)?;
                let Some(strings) = cast.as_any().downcast_ref::<StringArray>() else {
                    return exec_err!("registrable_domain expects a string column");
                };
                let mut out = StringBuilder::with_capacity(strings.len(), strings.len() * 12);
                for v in strings {
                    out.append_option(v.and_then(registrable_domain));
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
            }
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
        assert_eq!(registrable_domain("d3c4b5a6.cloudfront.net").as_deref(), Some("d3c4b5a6.cloudfront.net"));
        assert_eq!(registrable_domain("co.uk"), None);
        assert_eq!(registrable_domain("8.8.8.8"), None);
    }
}
