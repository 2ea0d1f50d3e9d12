/**
 * TypeScript client of the desiderata v1 API: explanations of deployed ML
 * models, served at the fidelity the caller's policy allows.
 *
 * ```ts
 * const applicant = instance({ age: 30, income: 129.5, home: "rent", records: false });
 * const client = new DesiderataClient("localhost:50051", { apiKey, insecure: true });
 * const { explanation } = await client.explain({ model: "credit", instance: applicant, kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION, purpose: "debugging" });
 * ```
 */
export {
  DesiderataClient,
  DEFAULT_TIMEOUT_MS,
  type AttributionDriftOptions,
  type BatchRow,
  type CallSettings,
  type ClientOptions,
  type ExplainBatchOptions,
  type ExplainDecisionsOptions,
  type GlobalSummaryOptions,
  type ListDecisionsOptions,
} from "./client.js";
export { bearerMetadata, channelCredentials, type ConnectionOptions } from "./credentials.js";
export { DesiderataError, decodeError, type FieldViolation, type QuotaViolation } from "./errors.js";
export { AsNumber, asNumber, featureValue, instance, type FeatureInput } from "./instance.js";
export * from "./gen/desiderata/v1/types.js";
export {
  ExplainRequest,
  ExplainResponse,
  ExplainBatchRequest,
  ExplainBatchResponse,
  ExplainDecisionRequest,
  ExplainDecisionResponse,
  ExplainStreamRequest,
  ExplainStreamResponse,
  GetCapabilitiesRequest,
  KindCapability,
  GetCapabilitiesResponse,
  GetGlobalSummaryRequest,
  FeatureImportance,
  ClassSummary,
  GetGlobalSummaryResponse,
  GetAttributionDriftRequest,
  FeatureDrift,
  GetAttributionDriftResponse,
  FeedbackVerdict,
  SubmitFeedbackRequest,
  SubmitFeedbackResponse,
  ExplanationServiceService,
  ExplanationServiceServer,
  ExplanationServiceClient,
} from "./gen/desiderata/v1/explanation_service.js";
export {
  FeatureSpec,
  TrainingData,
  PrivacyFacts,
  ModelCard,
  ListModelsRequest,
  ModelSummary,
  ListModelsResponse,
  GetModelRequest,
  GetModelResponse,
  PredictRequest,
  PredictResponse,
  ListDecisionsRequest,
  RecordedDecision,
  ListDecisionsResponse,
  ModelServiceService,
  ModelServiceServer,
  ModelServiceClient,
} from "./gen/desiderata/v1/model_service.js";
export {
  AuditOutcome,
  AuditEntry,
  QueryAuditRequest,
  QueryAuditResponse,
  VerifyAuditRequest,
  VerifyAuditResponse,
  AuditServiceService,
  AuditServiceServer,
  AuditServiceClient,
} from "./gen/desiderata/v1/audit_service.js";
