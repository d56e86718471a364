//! What PostgreSQL clients look up besides the data: the `pg_catalog`
//! schema and its functions (from `datafusion-pg-catalog`), the server's
//! settings (`SHOW`, `current_setting`), and `version()`.
//!
//! Clients read the catalog when they connect (DBeaver, Metabase), to
//! list tables and columns (Grafana's query builder, psql's `\d`) and to
//! learn types. The catalog's static tables are parsed once and shared by
//! every session.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray as _, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::SchemaProvider;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    self as pg, PgCatalogSchemaProvider, PgCatalogStaticTables, array_bounds_udf, format_type, has_privilege_udf,
    oid_type_planner, pg_get_expr_udf, quote_ident_udf,
};

/// The PostgreSQL version clients are told: the protocol and catalog
/// they may assume.
pub const PG_VERSION: &str = "16.6";

/// The name of the one database (DataFusion's default catalog).
pub const DATABASE: &str = "datafusion";

/// The settings `SHOW` and `current_setting` answer, by lower-case name.
pub fn setting(name: &str) -> Option<String> {
    let value = match name.to_ascii_lowercase().as_str() {
        "server_version" => PG_VERSION,
        "server_version_num" => "160006",
        "server_encoding" | "client_encoding" => "UTF8",
        "search_path" => "public",
        "timezone" => "UTC",
        "datestyle" => "ISO, MDY",
        "intervalstyle" => "postgres",
        "standard_conforming_strings" | "integer_datetimes" => "on",
        "transaction_isolation" | "default_transaction_isolation" | "transaction isolation level" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "on",
        "is_superuser" => "off",
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" => "C.UTF-8",
        "application_name" => "",
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => "0",
        "extra_float_digits" => "1",
        "bytea_output" => "hex",
        _ => return None,
    };
    Some(value.to_string())
}

/// What `version()` answers: a PostgreSQL version first, as clients parse it.
pub fn version() -> String {
    format!("PostgreSQL {PG_VERSION} (leakwatch {}, read-only)", env!("CARGO_PKG_VERSION"))
}

/// The tables of a session, as the catalog shows them: names, columns and
/// kinds, sorted, without the session's data. Every session offers the
/// same tables, so one description (taken from the first session) serves
/// all, and a table keeps its OID from one statement to the next, as
/// clients expect (psql's `\d flows` finds the OID in one statement and
/// reads the columns by it in the next).
#[derive(Debug, Clone, Default)]
struct Tables(Arc<BTreeMap<String, Schemas>>);

/// A catalog's schemas by name, each with its tables' columns and kinds.
type Schemas = BTreeMap<String, BTreeMap<String, (SchemaRef, TableType)>>;

impl Tables {
    async fn of(ctx: &SessionContext) -> Result<Self, DataFusionError> {
        let mut catalogs = BTreeMap::new();
        for catalog_name in ctx.catalog_names() {
            let Some(catalog) = ctx.catalog(&catalog_name) else { continue };
            let mut schemas = BTreeMap::new();
            for schema_name in catalog.schema_names() {
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                let mut tables = BTreeMap::new();
                for table_name in schema.table_names() {
                    if let Some(table) = schema.table(&table_name).await? {
                        tables.insert(table_name, (table.schema(), table.table_type()));
                    }
                }
                schemas.insert(schema_name, tables);
            }
            catalogs.insert(catalog_name, schemas);
        }
        Ok(Self(Arc::new(catalogs)))
    }

    /// The columns and kind of `catalog.schema.table`.
    fn table(&self, catalog: &str, schema: &str, table: &str) -> Option<&(SchemaRef, TableType)> {
        self.0.get(catalog)?.get(schema)?.get(table)
    }
}

#[async_trait::async_trait]
impl CatalogInfo for Tables {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(self.0.keys().cloned().collect())
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self.0.get(catalog).map(|s| s.keys().cloned().collect()))
    }

    async fn table_names(&self, catalog: &str, schema: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self.0.get(catalog).and_then(|c| c.get(schema)).map(|t| t.keys().cloned().collect()))
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>, DataFusionError> {
        Ok(self.table(catalog, schema, table).map(|(s, _)| s.clone()))
    }

    async fn table_type(&self, catalog: &str, schema: &str, table: &str) -> Result<Option<TableType>, DataFusionError> {
        Ok(self.table(catalog, schema, table).map(|(_, k)| *k))
    }
}

/// The catalog's tables, parsed once, and the `pg_catalog` schema every
/// session shares.
#[derive(Clone)]
pub struct Catalog {
    tables: Arc<PgCatalogStaticTables>,
    schema: Arc<tokio::sync::OnceCell<Arc<dyn SchemaProvider>>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// Parses the static catalog tables.
    pub fn new() -> Result<Self, DataFusionError> {
        Ok(Self { tables: Arc::new(PgCatalogStaticTables::try_new()?), schema: Arc::default() })
    }

    /// The shared `pg_catalog`, described from `ctx` (with `pg_catalog`
    /// itself) the first time.
    async fn schema(&self, ctx: &SessionContext) -> Result<Arc<dyn SchemaProvider>, DataFusionError> {
        let schema = self
            .schema
            .get_or_try_init(|| async {
                let first =
                    PgCatalogSchemaProvider::try_new(Tables::default(), self.tables.clone(), EmptyContextProvider)?;
                let mut tables = Tables::of(ctx).await?;
                let mut own = BTreeMap::new();
                for name in first.table_names() {
                    if let Some(table) = first.table(&name).await? {
                        own.insert(name, (table.schema(), table.table_type()));
                    }
                }
                let mut described = (*tables.0).clone();
                described.entry(DATABASE.to_string()).or_default().insert("pg_catalog".to_string(), own);
                tables = Tables(Arc::new(described));
                let shared = PgCatalogSchemaProvider::try_new(tables, self.tables.clone(), EmptyContextProvider)?;
                Ok::<_, DataFusionError>(Arc::new(shared) as Arc<dyn SchemaProvider>)
            })
            .await?;
        Ok(schema.clone())
    }

    /// Adds `pg_catalog`, its functions, `current_setting` and `version`
    /// to a session, and has it parse SQL as PostgreSQL does.
    pub async fn install(&self, ctx: &SessionContext) -> Result<(), DataFusionError> {
        let schema = self.schema(ctx).await?;
        let catalog = ctx
            .catalog(DATABASE)
            .ok_or_else(|| DataFusionError::Configuration(format!("no catalog {DATABASE} to add pg_catalog to")))?;
        catalog.register_schema("pg_catalog", schema)?;
        for udf in [
            pg::create_current_database_udf(DATABASE),
            pg::create_current_schema_udf(),
            pg::create_current_schemas_udf(),
            pg::create_pg_get_userbyid_udf(),
            has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
            has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
            pg::create_pg_table_is_visible(),
            format_type::create_format_type_udf(),
            pg::create_session_user_udf(),
            pg_get_expr_udf::create_pg_get_expr_udf(),
            pg::create_pg_get_partkeydef_udf(),
            pg::create_pg_relation_is_publishable_udf(),
            pg::create_pg_get_statisticsobjdef_columns_udf(),
            pg::create_pg_encoding_to_char_udf(),
            pg::create_pg_backend_pid_udf(),
            pg::create_pg_relation_size_udf(),
            pg::create_pg_total_relation_size_udf(),
            pg::create_pg_stat_get_numscans(),
            pg::create_pg_get_constraintdef(),
            pg::create_pg_get_partition_ancestors_udf(),
            quote_ident_udf::create_quote_ident_udf(),
            quote_ident_udf::create_parse_ident_udf(),
            array_bounds_udf::create_array_upper_udf(),
            array_bounds_udf::create_array_lower_udf(),
            current_setting_udf(),
            version_udf(),
        ] {
            ctx.register_udf(udf);
        }
        ctx.register_udtf("pg_get_keywords", self.tables.pg_get_keywords.clone());
        // `regclass`, `regtype`, ... as type names; PostgreSQL's syntax.
        let state = ctx.state_ref();
        let mut state = state.write();
        let mut next = SessionStateBuilder::new_from_existing(state.clone())
            .with_type_planner(Arc::new(oid_type_planner::PgOidTypePlanner))
            .build();
        next.config_mut().options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        *state = next;
        Ok(())
    }
}

/// `current_setting(name)`: the value of a setting `SHOW` knows.
fn current_setting_udf() -> datafusion::logical_expr::ScalarUDF {
    let f = |args: &[ColumnarValue]| -> datafusion::common::Result<ColumnarValue> {
        let lookup = |name: Option<&str>| -> datafusion::common::Result<Option<String>> {
            match name {
                None => Ok(None),
                Some(n) => setting(n).map(Some).ok_or_else(|| {
                    DataFusionError::Plan(format!("current_setting: unrecognized configuration parameter \"{n}\""))
                }),
            }
        };
        match args.first() {
            Some(ColumnarValue::Scalar(s)) => {
                let name = match s {
                    ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => v.clone(),
                    other => Some(other.to_string()),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(lookup(name.as_deref())?)))
            }
            Some(ColumnarValue::Array(a)) => {
                let names = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                let values =
                    names.as_string::<i32>().iter().map(lookup).collect::<datafusion::common::Result<Vec<_>>>()?;
                Ok(ColumnarValue::Array(Arc::new(StringArray::from(values)) as ArrayRef))
            }
            None => Err(DataFusionError::Plan("current_setting: needs the name of a setting".into())),
        }
    };
    create_udf("current_setting", vec![DataType::Utf8], DataType::Utf8, Volatility::Stable, Arc::new(f))
}

/// `version()`, as PostgreSQL clients expect to read it.
fn version_udf() -> datafusion::logical_expr::ScalarUDF {
    let f = |_: &[ColumnarValue]| -> datafusion::common::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version()))))
    };
    create_udf("version", vec![], DataType::Utf8, Volatility::Immutable, Arc::new(f))
}
