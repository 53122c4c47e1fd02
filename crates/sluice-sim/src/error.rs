//! Errors in the shapes the AWS SDK for Rust turns into its typed errors (AWS JSON 1.0:
//! `{"__type": "<namespace>#<Code>", "message": …}`; SQS also sends `x-amzn-query-error`, which
//! the SDK reads for its query-compatible error codes).

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    /// The JSON `__type` (namespace#Code).
    pub type_name: String,
    /// SQS's query-compatible `code;Sender|Receiver`, sent as `x-amzn-query-error`.
    pub query_error: Option<String>,
    pub message: String,
    /// DynamoDB's ThrottlingReasons: (reason, resource ARN).
    pub throttling_reasons: Vec<(String, String)>,
}

const DDB: &str = "com.amazonaws.dynamodb.v20120810";
const SQS: &str = "com.amazonaws.sqs";

impl ApiError {
    pub fn dynamodb(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            type_name: format!("{DDB}#{code}"),
            query_error: None,
            message: message.into(),
            throttling_reasons: Vec::new(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::dynamodb(400, "ValidationException", message)
    }

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

    pub fn sqs_invalid(message: impl Into<String>) -> Self {
        Self::sqs(
            400,
            "InvalidParameterValue",
            "InvalidParameterValue",
            message,
        )
    }

    pub fn no_queue() -> Self {
        Self::sqs(
            400,
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )
    }

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
