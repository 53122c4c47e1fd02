//! The fleet's membership table: one lease item per live instance
//! ([`sluice_core::membership`] decides what the leases mean).
//!
//! The table is keyed by `group` (S, the fleet: by default the name of the table it writes)
//! and `member` (S, one instance). Each item holds `expires_at_ms` (N, when the lease ends, on
//! the writer's clock), `seen` (N, the live members it counted at its last read) and `host` (S,
//! for people reading the table). A group is read with one strongly consistent Query.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use sluice_core::membership::Member;

use crate::CheckError;

/// The membership table of one group: lease writes, a strongly consistent read of the group, and
/// removals. A failed request is returned as an error, never retried here.
pub struct MembersTable {
    client: Client,
    table: String,
    group: String,
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl MembersTable {
    /// The leases of `group` in `table`. Makes no call; [`MembersTable::ensure`] checks (or
    /// creates) the table.
    pub fn new(client: Client, table: impl Into<String>, group: impl Into<String>) -> Self {
        MembersTable {
            client,
            table: table.into(),
            group: group.into(),
        }
    }

    /// The membership table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Checks the table exists and is keyed (`group` S, `member` S); creates it on demand
    /// (PAY_PER_REQUEST: a few writes a second cost cents) when `create` and it is missing,
    /// and waits until it is active.
    pub async fn ensure(&self, create: bool) -> Result<(), CheckError> {
        let what = format!(
            "the membership table `{}` (rate.membership.table)",
            self.table
        );
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        let table = match described {
            Ok(out) => out.table,
            Err(e) => {
                let missing = not_found(&e);
                if !(missing && create) {
                    let mut err = CheckError::of(&format!("cannot describe {what}"), &e);
                    if missing {
                        err.message.push_str(
                            ": create it (keys `group` S and `member` S) or set rate.membership.create_table = true",
                        );
                    }
                    return Err(err);
                }
                tracing::info!(table = %self.table, "creating the membership table (on demand)");
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(attribute("group")?)
                    .attribute_definitions(attribute("member")?)
                    .key_schema(key("group", KeyType::Hash)?)
                    .key_schema(key("member", KeyType::Range)?)
                    .send()
                    .await;
                match created {
                    Ok(out) => out.table_description,
                    // Another instance created it first.
                    Err(e)
                        if e.as_service_error()
                            .is_some_and(|se| se.is_resource_in_use_exception()) =>
                    {
                        None
                    }
                    Err(e) => return Err(CheckError::of(&format!("cannot create {what}"), &e)),
                }
            }
        };
        if let Some(t) = &table {
            let keys: Vec<(String, KeyType)> = t
                .key_schema()
                .iter()
                .map(|k| (k.attribute_name().to_owned(), k.key_type().clone()))
                .collect();
            let want = vec![
                ("group".to_owned(), KeyType::Hash),
                ("member".to_owned(), KeyType::Range),
            ];
            if keys != want {
                return Err(CheckError {
                    message: format!(
                        "{what} is keyed {keys:?}; it must be keyed by `group` (partition, S) and `member` (sort, S): name another table"
                    ),
                    permanent: true,
                });
            }
            if t.table_status() == Some(&TableStatus::Active) {
                return Ok(());
            }
        }
        // Wait for a table being created (here or by another instance) to become active.
        for _ in 0..120 {
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await;
            match described {
                Ok(out) => {
                    if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                        return Ok(());
                    }
                }
                // Just created (here or by another instance): DescribeTable may not know it
                // for a moment yet.
                Err(e) if not_found(&e) => {}
                Err(e) => return Err(CheckError::of(&format!("cannot describe {what}"), &e)),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(CheckError {
            message: format!("{what} did not become active within a minute"),
            permanent: false,
        })
    }

    /// Writes this member's lease: it ends at `expires_at_ms`, and the member counted `seen`.
    pub async fn renew(
        &self,
        member: &str,
        host: &str,
        expires_at_ms: u64,
        seen: u32,
    ) -> Result<(), String> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("group", AttributeValue::S(self.group.clone()))
            .item("member", AttributeValue::S(member.to_owned()))
            .item("expires_at_ms", n(expires_at_ms))
            .item("seen", n(u64::from(seen)))
            .item("host", AttributeValue::S(host.to_owned()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failed("cannot renew the lease", e))
    }

    /// Every lease of the group (live or not), read strongly consistent.
    pub async fn members(&self) -> Result<Vec<Member>, String> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .key_condition_expression("#g = :g")
                .expression_attribute_names("#g", "group")
                .expression_attribute_values(":g", AttributeValue::S(self.group.clone()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| self.failed("cannot read the members", e))?;
            for item in page.items() {
                let Some(id) = item.get("member").and_then(|v| v.as_s().ok()) else {
                    continue;
                };
                out.push(Member {
                    id: id.clone(),
                    expires_at_ms: number(item, "expires_at_ms"),
                    seen: number(item, "seen").min(u64::from(u32::MAX)) as u32,
                });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// Deletes a member's lease (this one leaving, or a long-dead one).
    pub async fn remove(&self, member: &str) -> Result<(), String> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("group", AttributeValue::S(self.group.clone()))
            .key("member", AttributeValue::S(member.to_owned()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.failed(&format!("cannot delete the lease of `{member}`"), e))
    }

    /// A failed call, said with the table it was for.
    fn failed<E: std::error::Error>(&self, what: &str, e: E) -> String {
        format!(
            "{what} in `{}`: {}",
            self.table,
            aws_sdk_dynamodb::error::DisplayErrorContext(e)
        )
    }
}

/// DescribeTable's answer for a table it does not know (or, just after CreateTable, not yet).
fn not_found(
    e: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::describe_table::DescribeTableError,
        aws_smithy_runtime_api::http::Response,
    >,
) -> bool {
    e.as_service_error()
        .is_some_and(|se| se.is_resource_not_found_exception())
}

fn attribute(name: &str) -> Result<AttributeDefinition, CheckError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .map_err(|e| CheckError {
            message: e.to_string(),
            permanent: true,
        })
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, CheckError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| CheckError {
            message: e.to_string(),
            permanent: true,
        })
}
