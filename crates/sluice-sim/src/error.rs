//! Errors in the shapes the AWS SDK for Rust turns into its typed errors (AWS JSON 1.0:
//! `{"__type": "<namespace>#<Code>", "message": …}`; SQS also sends `x-amzn-query-error`, which
//! the SDK reads for its query-compatible error codes).

/// An error as the AWS service would answer it: status, JSON `__type` and message, and for SQS the
/// query-compatible code header. The SDK turns it into the same typed error as the real service's.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status: 400 for client faults and throttles, 500 or 503 for server faults.
    pub status: u16,
    /// The JSON `__type` (namespace#Code).
    pub type_name: String,
    /// SQS's query-compatible `code;Sender|Receiver`, sent as `x-amzn-query-error`.
    pub query_error: Option<String>,
    /// The error's message, as the service words it where known.
    pub message: String,
    /// DynamoDB's ThrottlingReasons: (reason, resource ARN).
    pub throttling_reasons: Vec<(String, String)>,
}

const DDB: &str = "com.amazonaws.dynamodb.v20120810";
const SQS: &str = "com.amazonaws.sqs";

impl ApiError {
    /// A DynamoDB error: `code` is the bare name, e.g. `ValidationException`.
    pub fn dynamodb(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            type_name: format!("{DDB}#{code}"),
            query_error: None,
            message: message.into(),
            throttling_reasons: Vec::new(),
        }
    }

    /// DynamoDB's 400 ValidationException.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::dynamodb(400, "ValidationException", message)
    }

    /// DynamoDB's 400 ResourceNotFoundException: a missing table or index, or a table still
    /// CREATING.
    pub fn resource_not_found(message: impl Into<String>) -> Self {
        Self::dynamodb(400, "ResourceNotFoundException", message)
    }

    /// `code` is the JSON error name; `query_code` the legacy code the SDK reports.
    pub fn sqs(status: u16, code: &str, query_code: &str, message: impl Into<String>) -> Self {
        let fault = if status >= 500 { "Receiver" } else { "Sender" };
        ApiError {
            status,
            type_name: format!("{SQS}#{code}"),
            query_error: Some(format!("{query_code};{fault}")),
            message: message.into(),
            throttling_reasons: Vec::new(),
        }
    }

    /// SQS's 400 InvalidParameterValue.
    pub fn sqs_invalid(message: impl Into<String>) -> Self {
        Self::sqs(
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
            message,
        )
    }

    /// SQS's 400 QueueDoesNotExist (legacy code `AWS.SimpleQueueService.NonExistentQueue`).
    pub fn no_queue() -> Self {
        Self::sqs(
            400,
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )
    }

    /// The JSON response body, with the ThrottlingReasons when there are any (spelt as DynamoDB
    /// spells them for the exception).
    pub fn body(&self) -> String {
        let mut body = serde_json::json!({"__type": self.type_name, "message": self.message});
        if !self.throttling_reasons.is_empty() {
            // As DynamoDB spells it: ThrottlingException's member is lower camel case.
            let field = if self.type_name.ends_with("#ThrottlingException") {
                "throttlingReasons"
            } else {
                "ThrottlingReasons"
            };
            body[field] = self
                .throttling_reasons
                .iter()
                .map(|(reason, resource)| serde_json::json!({"reason": reason, "resource": resource}))
                .collect();
        }
        body.to_string()
    }
}

pub type ApiResult<T = serde_json::Value> = Result<T, ApiError>;
