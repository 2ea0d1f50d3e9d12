package dev.desiderata.client;

import dev.desiderata.v1.AuditEntry;
import dev.desiderata.v1.AuditServiceGrpc;
import dev.desiderata.v1.Consumption;
import dev.desiderata.v1.ExplainBatchRequest;
import dev.desiderata.v1.Explanation;
import dev.desiderata.v1.ExplanationKind;
import dev.desiderata.v1.ExplanationParams;
import dev.desiderata.v1.ExplanationServiceGrpc;
import dev.desiderata.v1.ListDecisionsRequest;
import dev.desiderata.v1.ModelServiceGrpc;
import dev.desiderata.v1.QueryAuditRequest;
import dev.desiderata.v1.RecordedDecision;
import io.grpc.ChannelCredentials;
import io.grpc.ClientInterceptors;
import io.grpc.CompositeChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Channel;
import io.grpc.TlsChannelCredentials;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.concurrent.TimeUnit;

/**
 * The v1 services over one channel, with API-key credentials, TLS and a default deadline.
 *
 * <pre>{@code
 * try (var client = DesiderataClient.builder("localhost:50051").apiKey(key).plaintext().build()) {
 *   var response = client.explanations().explain(request);
 * }
 * }</pre>
 *
 * <p>Failed calls throw {@link io.grpc.StatusRuntimeException}; {@link ErrorDetails#from}
 * decodes its rich details.
 */
public final class DesiderataClient implements AutoCloseable {
  /** Deadline of calls that set none. */
  public static final Duration DEFAULT_TIMEOUT = Duration.ofSeconds(30);

  private final ManagedChannel channel;
  private final ExplanationServiceGrpc.ExplanationServiceBlockingStub explanations;
  private final ModelServiceGrpc.ModelServiceBlockingStub models;
  private final AuditServiceGrpc.AuditServiceBlockingStub audit;

  private DesiderataClient(ManagedChannel channel, Duration timeout) {
    this.channel = channel;
    Channel intercepted =
        timeout.isZero() ? channel : ClientInterceptors.intercept(channel, new DefaultDeadline(timeout));
    this.explanations = ExplanationServiceGrpc.newBlockingStub(intercepted);
    this.models = ModelServiceGrpc.newBlockingStub(intercepted);
    this.audit = AuditServiceGrpc.newBlockingStub(intercepted);
  }

  public static Builder builder(String target) {
    return new Builder(target);
  }

  /** The ExplanationService blocking stub. */
  public ExplanationServiceGrpc.ExplanationServiceBlockingStub explanations() {
    return explanations;
  }

  /** The ModelService blocking stub. */
  public ModelServiceGrpc.ModelServiceBlockingStub models() {
    return models;
  }

  /** The AuditService blocking stub (regulators and auditors, as the policy allows). */
  public AuditServiceGrpc.AuditServiceBlockingStub audit() {
    return audit;
  }

  /**
   * One explanation per instance of {@code request}, in request order, from one ExplainBatch call:
   * many instances of one model with the same kind, purpose, consumption and parameters (build each
   * instance with {@link Instances}, as for {@code Explain}). At most the server's {@code
   * explain.max_batch_instances} instances (256 by default); each is admitted, noised, disclosed,
   * charged and audited as a call of its own, so each answer is the one {@code Explain} gives for
   * that instance alone, up to float32 rounding (the server may evaluate the rows in shared passes).
   * The request may carry {@code decision_ids} instead of instances, recorded decisions each
   * answered as {@code ExplainDecision} would (see {@link #explainDecisions}). One call under the
   * client's default deadline for the whole batch (for another: {@code
   * explanations().withDeadlineAfter(...).explainBatch(request)}).
   *
   * <p>All or nothing: an invalid instance fails the call with {@code INVALID_ARGUMENT}, its fields
   * named {@code instances[i].features[name]} in the field violations of {@link ErrorDetails#from};
   * a batch over the caller's rate or budget fails with {@code RESOURCE_EXHAUSTED} and nothing
   * charged; end users, who may not submit instances, get {@code PERMISSION_DENIED}. A failed call
   * throws {@link io.grpc.StatusRuntimeException}.
   */
  public List<Explanation> explainBatch(ExplainBatchRequest request) {
    return explanations.explainBatch(request).getExplanationsList();
  }

  /**
   * One feature-attribution explanation per recorded decision (ids returned by {@code
   * ModelService.Predict}), in the order of {@code decisionIds}, from one ExplainBatch call with
   * {@code decision_ids}: each answered as {@code ExplainDecision} would answer it, its {@code
   * recorded_decision_id} the decision it explains. All the decisions must be of one model version;
   * {@code params} may be null for the server's defaults. Consumption is static; one call under the
   * client's default deadline for the whole batch, each decision admitted, charged and audited as a
   * call of its own.
   *
   * <p>All or nothing: an end user may ask only about their own decisions, and one decision of
   * someone else's refuses the whole batch with {@code PERMISSION_DENIED}; an unknown id fails it
   * with {@code NOT_FOUND}, {@code decision_ids[i]} named in the status description; an empty id or
   * decisions of different model versions fail it with {@code INVALID_ARGUMENT}, the field
   * violations of {@link ErrorDetails#from} naming {@code decision_ids...}. A failed call throws
   * {@link io.grpc.StatusRuntimeException}; an answer that is not one explanation per id, in
   * order, throws {@link IllegalStateException}.
   */
  public List<Explanation> explainDecisions(
      List<String> decisionIds, String purpose, ExplanationParams params) {
    Objects.requireNonNull(decisionIds, "decisionIds");
    var request =
        ExplainBatchRequest.newBuilder()
            .addAllDecisionIds(decisionIds)
            .setKind(ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION)
            .setPurpose(Objects.requireNonNull(purpose, "purpose"))
            .setConsumption(Consumption.CONSUMPTION_STATIC);
    if (params != null) {
      request.setParams(params);
    }
    List<Explanation> explanations = explainBatch(request.build());
    if (explanations.size() != decisionIds.size()) {
      throw new IllegalStateException(
          "ExplainBatch returned " + explanations.size() + " explanations for " + decisionIds.size() + " decisions");
    }
    for (int i = 0; i < decisionIds.size(); i++) {
      String explained = explanations.get(i).getRecordedDecisionId();
      if (!explained.equals(decisionIds.get(i))) {
        throw new IllegalStateException(
            "ExplainBatch answer " + i + " explains decision " + explained + ", not " + decisionIds.get(i));
      }
    }
    return explanations;
  }

  /**
   * Every audit entry matching {@code request}, oldest first: QueryAudit returns one page (at most
   * {@code page_size} records, 100 by default), so this follows {@code next_page_token} until it is
   * empty, starting from the request's own page token. Each page is a separate call with its own
   * deadline (and an audited read), so narrow the request with its filters (role, principal,
   * since, ...) rather than reading a long log; a failed page throws
   * {@link io.grpc.StatusRuntimeException}.
   */
  public List<AuditEntry> auditEntries(QueryAuditRequest request) {
    List<AuditEntry> entries = new ArrayList<>();
    var page = request;
    while (true) {
      var response = audit.queryAudit(page);
      entries.addAll(response.getEntriesList());
      String next = response.getNextPageToken();
      if (next.isEmpty()) {
        return entries;
      }
      page = request.toBuilder().setPageToken(next).build();
    }
  }

  /**
   * Every decision recorded about one subject by {@code request}'s model (any version), newest
   * first, without the features it was made from: ListDecisions returns one page (at most {@code
   * page_size} decisions, 50 by default), so this follows {@code next_page_token} until it is
   * empty, starting from the request's own page token. An empty {@code subject_id} is the caller's
   * own subject (end users, who may list their own decisions to ask
   * {@code ExplainDecision} about them); others list whose decisions the policy allows (action
   * {@code "decisions/list"}). Each page is a separate call with its own deadline and is itself
   * audited; a failed page (e.g. {@code PERMISSION_DENIED}) throws
   * {@link io.grpc.StatusRuntimeException}.
   */
  public List<RecordedDecision> decisions(ListDecisionsRequest request) {
    List<RecordedDecision> decisions = new ArrayList<>();
    var page = request;
    while (true) {
      var response = models.listDecisions(page);
      decisions.addAll(response.getDecisionsList());
      String next = response.getNextPageToken();
      if (next.isEmpty()) {
        return decisions;
      }
      page = request.toBuilder().setPageToken(next).build();
    }
  }

  /** The underlying channel, e.g. for async or future stubs. */
  public ManagedChannel channel() {
    return channel;
  }

  @Override
  public void close() throws InterruptedException {
    channel.shutdown();
    if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
      channel.shutdownNow();
    }
  }

  /** Configures a {@link DesiderataClient}; TLS with the system roots unless told otherwise. */
  public static final class Builder {
    private final String target;
    private String apiKey;
    private ChannelCredentials transport = TlsChannelCredentials.create();
    private Duration timeout = DEFAULT_TIMEOUT;
    private String loadBalancing;

    private Builder(String target) {
      this.target = Objects.requireNonNull(target, "target");
    }

    /** Sends {@code authorization: Bearer <key>} on every call. */
    public Builder apiKey(String key) {
      this.apiKey = key;
      return this;
    }

    /** TLS with the given credentials (e.g. custom roots or a client certificate for mTLS). */
    public Builder tls(ChannelCredentials tls) {
      this.transport = Objects.requireNonNull(tls, "tls");
      return this;
    }

    /** Plaintext: the API key travels in clear. Only for a local server or a trusted sidecar. */
    public Builder plaintext() {
      this.transport = InsecureChannelCredentials.create();
      return this;
    }

    /** Deadline of calls that set none; {@link Duration#ZERO} disables it. */
    public Builder defaultTimeout(Duration timeout) {
      this.timeout = Objects.requireNonNull(timeout, "timeout");
      return this;
    }

    /**
     * gRPC load-balancing policy: {@code "round_robin"} spreads calls over every address the
     * target resolves to (e.g. {@code dns:///desiderata-headless:50051}); unset keeps gRPC's
     * default, one connection ({@code "pick_first"}).
     */
    public Builder loadBalancing(String policy) {
      if (!"round_robin".equals(policy) && !"pick_first".equals(policy)) {
        throw new IllegalArgumentException("loadBalancing must be round_robin or pick_first, not " + policy);
      }
      this.loadBalancing = policy;
      return this;
    }

    public DesiderataClient build() {
      ChannelCredentials creds =
          apiKey == null ? transport : CompositeChannelCredentials.create(transport, new ApiKeyCredentials(apiKey));
      var channel = Grpc.newChannelBuilder(target, creds);
      if (loadBalancing != null) {
        channel.defaultLoadBalancingPolicy(loadBalancing);
      }
      return new DesiderataClient(channel.build(), timeout);
    }
  }
}
