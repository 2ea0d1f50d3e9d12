/** A promise-based client of the v1 services, with credentials and default deadlines. */
import { Metadata, type CallOptions, type ClientUnaryCall, type ServiceError } from "@grpc/grpc-js";

import { channelCredentials, type ConnectionOptions } from "./credentials.js";
import { decodeError } from "./errors.js";
import { type FeatureInput, instance } from "./instance.js";
import {
  type AuditEntry,
  AuditServiceClient,
  QueryAuditRequest,
  type QueryAuditResponse,
  VerifyAuditRequest,
  type VerifyAuditResponse,
} from "./gen/desiderata/v1/audit_service.js";
import {
  type DeepPartial,
  ExplainBatchRequest,
  type ExplainBatchResponse,
  ExplainDecisionRequest,
  type ExplainDecisionResponse,
  ExplainRequest,
  type ExplainResponse,
  ExplainStreamRequest,
  type ExplainStreamResponse,
  ExplanationServiceClient,
  GetAttributionDriftRequest,
  type GetAttributionDriftResponse,
  GetCapabilitiesRequest,
  type GetCapabilitiesResponse,
  GetGlobalSummaryRequest,
  type GetGlobalSummaryResponse,
  SubmitFeedbackRequest,
  type SubmitFeedbackResponse,
} from "./gen/desiderata/v1/explanation_service.js";
import {
  GetModelRequest,
  type GetModelResponse,
  ListDecisionsRequest,
  type ListDecisionsResponse,
  ListModelsRequest,
  type ListModelsResponse,
  ModelServiceClient,
  PredictRequest,
  type PredictResponse,
  type RecordedDecision,
} from "./gen/desiderata/v1/model_service.js";
import type { Explanation, Instance } from "./gen/desiderata/v1/types.js";

/** Deadline of calls that set none, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 30_000;

export interface ClientOptions extends ConnectionOptions {
  /** Deadline of calls that set none, in milliseconds (default 30 s). */
  timeoutMs?: number;
  /**
   * gRPC load-balancing policy: "round_robin" spreads calls over every address the
   * target resolves to (e.g. "dns:///desiderata-headless:50051"); unset keeps gRPC's
   * default, one connection ("pick_first").
   */
  loadBalancing?: "pick_first" | "round_robin";
}

export interface CallSettings {
  /** This call's deadline in milliseconds from now. */
  timeoutMs?: number;
  metadata?: Metadata;
}

/** What {@link DesiderataClient.globalSummary} asks besides the model. */
export interface GlobalSummaryOptions {
  /**
   * Declared purpose, e.g. "monitoring", "transparency" or "audit"; the policy decides it on the
   * action "global/summary". Required.
   */
  purpose: string;
  /** Model version; empty or unset selects the served version. */
  modelVersion?: string;
}

/** What {@link DesiderataClient.attributionDrift} asks besides the model. */
export interface AttributionDriftOptions {
  /** Declared purpose, e.g. "monitoring", "audit"; the policy decides it on the action "global/drift". Required. */
  purpose: string;
  /** Model version; empty or unset selects the served version. */
  modelVersion?: string;
  /**
   * How many of the version's most recent recorded decisions are compared: 0 or unset means
   * the server's default (500), at most 5,000 (more is INVALID_ARGUMENT). Fewer than 20
   * decisions in the window is FAILED_PRECONDITION.
   */
  maxDecisions?: number;
}

/** What {@link DesiderataClient.listDecisions} and {@link DesiderataClient.decisions} ask besides the model. */
export interface ListDecisionsOptions {
  /**
   * Declared purpose, e.g. "transparency", "recourse" or "contest"; the policy decides it on the
   * action "decisions/list". Required.
   */
  purpose: string;
  /** Whose decisions: empty or unset means the caller's own subject (end users). */
  subjectId?: string;
  /** Decisions per page: 0 or unset means the server's default (50), at most 500 (more is INVALID_ARGUMENT). */
  pageSize?: number;
  /** The previous page's `nextPageToken`; empty or unset for the first page. */
  pageToken?: string;
}

/**
 * One row of {@link DesiderataClient.explainBatch}: plain feature values, converted by {@link instance}
 * (an object, or a Map to keep any order), or an `Instance` already built, e.g. by `instance(...)`.
 */
export type BatchRow = Readonly<Record<string, FeatureInput>> | ReadonlyMap<string, FeatureInput> | Instance;

/**
 * What {@link DesiderataClient.explainBatch} asks besides the model, rows and purpose: the other fields
 * of an `ExplainRequest`, with the same meaning and the same defaults (`kind` unset: feature
 * attribution, unless `params` say otherwise; `consumption` unset: static; `modelVersion` unset: the
 * served version; `locale` unset: "en").
 */
export type ExplainBatchOptions = Omit<
  DeepPartial<ExplainBatchRequest>,
  "model" | "purpose" | "instances" | "decisionIds"
>;

/**
 * What {@link DesiderataClient.explainDecisions} asks besides the decision ids and purpose: the other
 * fields of an `ExplainDecisionRequest`, with the same meaning and the same defaults (`kind` unset:
 * feature attribution, unless `params` say otherwise; `consumption` unset: static; `locale` unset:
 * "en"), and `modelVersion`: unset, the decisions' own version; set, it must be theirs
 * (INVALID_ARGUMENT otherwise).
 */
export type ExplainDecisionsOptions = Omit<
  DeepPartial<ExplainBatchRequest>,
  "model" | "purpose" | "instances" | "decisionIds"
>;

type Unary<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/**
 * The v1 services (explanations, models, audit) over one channel. Every method resolves
 * with the response or rejects with a {@link DesiderataError} whose rich details are decoded.
 */
export class DesiderataClient {
  /** The generated ExplanationService stub (callback API). */
  readonly explanations: ExplanationServiceClient;
  /** The generated ModelService stub (callback API). */
  readonly models: ModelServiceClient;
  /**
   * The generated AuditService stub (callback API): the hash-chained decision log,
   * for regulators and auditors as the policy allows (action "audit/read").
   */
  readonly audit: AuditServiceClient;
  private readonly timeoutMs: number;

  /** @param address "host:port", or any gRPC target ("dns:///name:port", "ipv4:a:p,b:p") */
  constructor(address: string, options: ClientOptions = {}) {
    const { credentials, interceptors } = channelCredentials(options);
    const policy = options.loadBalancing;
    if (policy !== undefined && policy !== "pick_first" && policy !== "round_robin") {
      throw new Error(`loadBalancing must be "round_robin" or "pick_first", not ${JSON.stringify(policy)}`);
    }
    const channel = policy
      ? { "grpc.service_config": JSON.stringify({ loadBalancingConfig: [{ [policy]: {} }] }) }
      : {};
    this.explanations = new ExplanationServiceClient(address, credentials, { interceptors, ...channel });
    // Same address, credentials and options: grpc-js shares the subchannel.
    this.models = new ModelServiceClient(address, credentials, { interceptors, ...channel });
    this.audit = new AuditServiceClient(address, credentials, { interceptors, ...channel });
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  explain(request: DeepPartial<ExplainRequest>, settings?: CallSettings): Promise<ExplainResponse> {
    return this.unary(this.explanations, this.explanations.explain, ExplainRequest.fromPartial(request), settings);
  }

  /**
   * One explanation per row, in the rows' order, from one ExplainBatch call: one round trip and one
   * policy decision for the batch, while each row is admitted, noised, disclosed, charged and audited
   * as a call of its own, so each answer is the one {@link explain} would give that row, up to float32
   * rounding (the server may evaluate rows in shared passes). At most the server's
   * `explain.max_batch_instances` rows (256 by default). All or nothing: an invalid row
   * (`instances[i].features[name]` in `err.badRequest`) or a batch that does not fit the caller's
   * rate or budget rejects the call with nothing charged. A row that cannot be converted (see
   * {@link instance}) rejects with a TypeError or RangeError naming `rows[i]`, before any call.
   *
   * @param model model name
   * @param rows the instances, as plain feature values or built `Instance`s
   * @param purpose declared purpose, e.g. "debugging", "monitoring", "audit"
   */
  async explainBatch(
    model: string,
    rows: readonly BatchRow[],
    purpose: string,
    options: ExplainBatchOptions = {},
    settings?: CallSettings,
  ): Promise<Explanation[]> {
    const req = ExplainBatchRequest.fromPartial({
      ...options,
      model,
      purpose,
      instances: rows.map((row, i) => toInstance(row, i)),
    });
    const res = await this.unary<ExplainBatchRequest, ExplainBatchResponse>(
      this.explanations,
      this.explanations.explainBatch,
      req,
      settings,
    );
    return res.explanations;
  }

  /**
   * One explanation per recorded decision (ids returned by {@link predict}), in the ids' order, from
   * one ExplainBatch call: each answer is the one {@link explainDecision} would give that decision, and
   * its `recordedDecisionId` is the decision it explains (checked here: an answer out of order or
   * missing rejects with an Error). The decisions must all be of one model version; at most the
   * server's `explain.max_batch_instances` ids (256 by default). An end user may explain only their
   * own decisions (as with {@link explainDecision}). All or nothing, with nothing charged: one
   * decision the caller may not explain (e.g. someone else's, for an end user) refuses the whole
   * batch with PERMISSION_DENIED; an unknown id is NOT_FOUND naming `decision_ids[i]` in the status
   * message; an empty id, or decisions of different model versions, are INVALID_ARGUMENT naming
   * `decision_ids[i]` in `err.badRequest`; a batch that does not fit the caller's rate or budget is
   * RESOURCE_EXHAUSTED.
   *
   * @param decisionIds the recorded decisions, as {@link predict} returned them
   * @param purpose declared purpose, e.g. "debugging", "audit", "transparency", "contest"
   */
  async explainDecisions(
    decisionIds: readonly string[],
    purpose: string,
    options: ExplainDecisionsOptions = {},
    settings?: CallSettings,
  ): Promise<Explanation[]> {
    const req = ExplainBatchRequest.fromPartial({ ...options, purpose, decisionIds: [...decisionIds] });
    const res = await this.unary<ExplainBatchRequest, ExplainBatchResponse>(
      this.explanations,
      this.explanations.explainBatch,
      req,
      settings,
    );
    const explanations = res.explanations;
    if (explanations.length !== decisionIds.length) {
      throw new Error(`ExplainBatch answered ${explanations.length} explanations for ${decisionIds.length} decisions`);
    }
    explanations.forEach((ex, i) => {
      if (ex.recordedDecisionId !== decisionIds[i]) {
        throw new Error(
          `ExplainBatch answer ${i} explains decision ${JSON.stringify(ex.recordedDecisionId)}, ` +
            `not decision_ids[${i}] ${JSON.stringify(decisionIds[i])}`,
        );
      }
    });
    return explanations;
  }

  explainDecision(
    request: DeepPartial<ExplainDecisionRequest>,
    settings?: CallSettings,
  ): Promise<ExplainDecisionResponse> {
    const req = ExplainDecisionRequest.fromPartial(request);
    return this.unary(this.explanations, this.explanations.explainDecision, req, settings);
  }

  getCapabilities(
    request: DeepPartial<GetCapabilitiesRequest>,
    settings?: CallSettings,
  ): Promise<GetCapabilitiesResponse> {
    const req = GetCapabilitiesRequest.fromPartial(request);
    return this.unary(this.explanations, this.explanations.getCapabilities, req, settings);
  }

  /**
   * Global view of a model: mean |attribution| per feature and predicted class over a sample
   * of its training reference (the policy decides the action "global/summary").
   *
   * The response names the `model`, `modelVersion` and local `method` behind it, and lists
   * `classes`, one per predicted class: `classLabel`, the reference `rows` predicted as it, and
   * `features` (largest mean |attribution| first), each with its `meanAbsAttribution` (mean |attribution|, in units of the class
   * probability, rounded as the caller's tier says) and `share` (its share of the summed mean
   * |attribution| over all features, in [0, 1]). `disclosure` carries the policy decision.
   *
   * @param model model name
   */
  globalSummary(
    model: string,
    options: GlobalSummaryOptions,
    settings?: CallSettings,
  ): Promise<GetGlobalSummaryResponse> {
    const req = GetGlobalSummaryRequest.fromPartial({
      model,
      modelVersion: options.modelVersion ?? "",
      purpose: options.purpose,
    });
    return this.unary(this.explanations, this.explanations.getGlobalSummary, req, settings);
  }

  /**
   * Attribution drift: the most recent recorded decisions (ModelService.Predict) of a model
   * version, explained and compared feature by feature with its training reference (the policy
   * decides the action "global/drift"). Only aggregates over at least 20 decisions are returned:
   * fewer is FAILED_PRECONDITION.
   *
   * The response names the `model`, `modelVersion`, the local `method` behind both samples
   * ("integrated_gradients" or "permutation_shapley") and the `targetClass` whose attributions
   * are compared; `referenceRows` and `decisions` count the two samples, recorded between
   * `firstDecisionAt` and `lastDecisionAt`. `alpha` is the family-wise false-alarm rate of the
   * feature tests; `shareDistance` is the total-variation distance, in [0, 1], between the two
   * importance profiles (each feature's share of the summed mean |attribution|), and
   * `shareThreshold` the distance random splits of the pooled rows exceed with probability
   * `alpha`. `drifted` is set when some feature drifted. `features` come most drifted (largest
   * KS statistic) first, each with `referenceMeanAbsAttribution` and `recentMeanAbsAttribution`
   * (mean |attribution|, in units of the class probability), `ksStatistic` (two-sample
   * Kolmogorov-Smirnov statistic of the signed attributions, in [0, 1]), `pValue` (not adjusted
   * for the number of features) and `drifted` (`pValue` times the number of features is below
   * `alpha`: Bonferroni). `disclosure` carries the policy decision.
   *
   * @param model model name
   */
  attributionDrift(
    model: string,
    options: AttributionDriftOptions,
    settings?: CallSettings,
  ): Promise<GetAttributionDriftResponse> {
    const req = GetAttributionDriftRequest.fromPartial({
      model,
      modelVersion: options.modelVersion ?? "",
      purpose: options.purpose,
      maxDecisions: options.maxDecisions ?? 0,
    });
    return this.unary(this.explanations, this.explanations.getAttributionDrift, req, settings);
  }

  /**
   * Successive refinements of a sampling estimate; the last has `final` set.
   * Leaving the loop early (`break`, `return`, a throw) cancels the call, so the
   * server stops computing refinements nobody reads.
   */
  async *explainStream(
    request: DeepPartial<ExplainStreamRequest>,
    settings?: CallSettings,
  ): AsyncGenerator<ExplainStreamResponse> {
    const call = this.explanations.explainStream(
      ExplainStreamRequest.fromPartial(request),
      settings?.metadata ?? new Metadata(),
      { deadline: this.deadline(settings) },
    );
    try {
      for await (const message of call) yield message as ExplainStreamResponse;
    } catch (err) {
      throw decodeError(err);
    } finally {
      call.cancel(); // a no-op once the stream has ended
    }
  }

  /**
   * Feedback on an explanation (`decisionId` = its `disclosure.decisionId`): a verdict and the
   * features that should or should not matter. The policy decides it as dynamic consumption.
   */
  submitFeedback(
    request: DeepPartial<SubmitFeedbackRequest>,
    settings?: CallSettings,
  ): Promise<SubmitFeedbackResponse> {
    const req = SubmitFeedbackRequest.fromPartial(request);
    return this.unary(this.explanations, this.explanations.submitFeedback, req, settings);
  }

  listModels(request: DeepPartial<ListModelsRequest> = {}, settings?: CallSettings): Promise<ListModelsResponse> {
    return this.unary(this.models, this.models.listModels, ListModelsRequest.fromPartial(request), settings);
  }

  getModel(request: DeepPartial<GetModelRequest>, settings?: CallSettings): Promise<GetModelResponse> {
    return this.unary(this.models, this.models.getModel, GetModelRequest.fromPartial(request), settings);
  }

  /** Scores an instance for a subject and records the decision. */
  predict(request: DeepPartial<PredictRequest>, settings?: CallSettings): Promise<PredictResponse> {
    return this.unary(this.models, this.models.predict, PredictRequest.fromPartial(request), settings);
  }

  /**
   * One page of the decisions recorded (by {@link predict}) about one subject by a model, any of
   * its versions, newest first; pass the response's `nextPageToken` as `pageToken` for the next
   * page (empty: no more). See {@link decisions}.
   *
   * Each `RecordedDecision` gives its `decisionId` (for {@link explainDecision}), `model`,
   * `modelVersion`, `recordedAt` and `predictedClass` (empty when that version's classes no longer
   * match the served card), never the features it was made from. `subjectId` empty or unset lists
   * the caller's own subject (end users); `pageSize` 0 or unset means the server's default (50),
   * at most 500.
   *
   * The policy decides the action "decisions/list"; the shipped policy lets end users list their
   * own (purposes "transparency", "recourse", "contest") and domain experts of the model's domain
   * anyone's ("transparency", "contest"); others are PERMISSION_DENIED. Every list is audited.
   *
   * @param model model name
   */
  listDecisions(
    model: string,
    options: ListDecisionsOptions,
    settings?: CallSettings,
  ): Promise<ListDecisionsResponse> {
    const req = ListDecisionsRequest.fromPartial({
      model,
      purpose: options.purpose,
      subjectId: options.subjectId ?? "",
      pageSize: options.pageSize ?? 0,
      pageToken: options.pageToken ?? "",
    });
    return this.unary(this.models, this.models.listDecisions, req, settings);
  }

  /**
   * Every decision recorded about one subject by a model, newest first: {@link listDecisions}
   * returns pages of at most `pageSize` decisions (50 when unset), so this follows `nextPageToken`
   * until it is empty. Paging starts at `options.pageToken` if set; `settings` (deadline, metadata)
   * apply to each page's call, and each page's call is audited.
   *
   * @param model model name
   */
  async decisions(model: string, options: ListDecisionsOptions, settings?: CallSettings): Promise<RecordedDecision[]> {
    const decisions: RecordedDecision[] = [];
    let pageToken = options.pageToken ?? "";
    do {
      const page = await this.listDecisions(model, { ...options, pageToken }, settings);
      decisions.push(...page.decisions);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return decisions;
  }

  /**
   * One page of a model's audited decisions, oldest first; pass the response's
   * `nextPageToken` as `pageToken` for the next page (empty: no more). See {@link auditEntries}.
   */
  queryAudit(request: DeepPartial<QueryAuditRequest>, settings?: CallSettings): Promise<QueryAuditResponse> {
    return this.unary(this.audit, this.audit.queryAudit, QueryAuditRequest.fromPartial(request), settings);
  }

  /** Verifies the hash chain of the whole audit log (`ok`, or the first broken record in `problem`). */
  verifyAudit(request: DeepPartial<VerifyAuditRequest>, settings?: CallSettings): Promise<VerifyAuditResponse> {
    return this.unary(this.audit, this.audit.verifyAudit, VerifyAuditRequest.fromPartial(request), settings);
  }

  /**
   * Every audited decision matching `request`, oldest first: QueryAudit returns pages of at
   * most `pageSize` entries (100 when unset), so this follows `nextPageToken` until it is empty.
   * Paging starts at `request.pageToken` if set; `settings` (deadline, metadata) apply to each page's call.
   */
  async auditEntries(request: DeepPartial<QueryAuditRequest>, settings?: CallSettings): Promise<AuditEntry[]> {
    const entries: AuditEntry[] = [];
    let pageToken = request.pageToken ?? "";
    do {
      const page = await this.queryAudit({ ...request, pageToken }, settings);
      entries.push(...page.entries);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    return entries;
  }

  close(): void {
    this.explanations.close();
    this.models.close();
    this.audit.close();
  }

  private deadline(settings?: CallSettings): Date {
    return new Date(Date.now() + (settings?.timeoutMs ?? this.timeoutMs));
  }

  private unary<Req, Res>(
    stub: object,
    method: (...args: never[]) => ClientUnaryCall,
    request: Req,
    settings?: CallSettings,
  ): Promise<Res> {
    const call = method as unknown as Unary<Req, Res>;
    return new Promise((resolve, reject) => {
      call.call(stub, request, settings?.metadata ?? new Metadata(), { deadline: this.deadline(settings) }, (err, res) =>
        err ? reject(decodeError(err)) : resolve(res),
      );
    });
  }
}

/** A batch row as an `Instance`: built ones as they are, plain values through {@link instance}. */
function toInstance(row: BatchRow, i: number): DeepPartial<Instance> {
  if (!(row instanceof Map) && Array.isArray((row as { features?: unknown }).features)) return row as Instance;
  try {
    return instance(row as Readonly<Record<string, FeatureInput>> | ReadonlyMap<string, FeatureInput>);
  } catch (err) {
    if (err instanceof TypeError) throw new TypeError(`rows[${i}]: ${err.message}`);
    if (err instanceof RangeError) throw new RangeError(`rows[${i}]: ${err.message}`);
    throw err;
  }
}
