//! Joins that make the threads they run on wait now and then.
//!
//! A tokio thread runs one task until it waits. DataFusion's scans count
//! their batches against tokio's budget and wait when it runs out, but a
//! join that makes many output batches from one input batch (a cross
//! join: every row of one side with a batch of the other) hands them out
//! without ever waiting, and an aggregate above it takes them all in one
//! go. Such a query held every query thread for as long as it ran: no
//! timer fired on them, so its time limit passed unseen (13 s for a 1 s
//! limit on 27 billion rows, hours on more), and other queries and the
//! dashboard's refresh waited. Every join of a plan run here is wrapped in
//! DataFusion's [`CooperativeExec`], which counts each batch the join
//! hands out against the budget: its thread waits once the budget is
//! spent, lets timers and other tasks run, and the query stops at its
//! limit.

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode as _};
use datafusion::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;

/// Wraps each join of a physical plan in a [`CooperativeExec`].
#[derive(Debug, Default)]
pub(crate) struct YieldingJoins;

impl PhysicalOptimizerRule for YieldingJoins {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.name().ends_with("JoinExec") {
                Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "yielding_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
