package dev.desiderata.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Timestamp;
import dev.desiderata.examples.Explain;
import dev.desiderata.v1.AuditEntry;
import dev.desiderata.v1.Consumption;
import dev.desiderata.v1.ExplainBatchRequest;
import dev.desiderata.v1.ExplainDecisionRequest;
import dev.desiderata.v1.ExplainRequest;
import dev.desiderata.v1.Explanation;
import dev.desiderata.v1.ExplanationKind;
import dev.desiderata.v1.Feature;
import dev.desiderata.v1.FeedbackVerdict;
import dev.desiderata.v1.GetCapabilitiesRequest;
import dev.desiderata.v1.Instance;
import dev.desiderata.v1.ListDecisionsRequest;
import dev.desiderata.v1.PredictRequest;
import dev.desiderata.v1.QueryAuditRequest;
import dev.desiderata.v1.RecordedDecision;
import dev.desiderata.v1.SubmitFeedbackRequest;
import dev.desiderata.v1.VerifyAuditRequest;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/** The Java SDK against a real server on the demo model. */
class SmokeTest {
  private static final String ML_ENGINEER_KEY = "demo-ml_engineer-key"; // demo credential
  private static final String REGULATOR_KEY = "demo-regulator-key"; // demo credential
  private static final String END_USER_KEY = "demo-end_user-key"; // demo credential, subject applicant-0001
  private static final String DOMAIN_EXPERT_KEY = "demo-domain_expert-key"; // demo credential, domain credit
  private static final String SUBJECT = "applicant-0001";
  private static final String OTHER_SUBJECT = "applicant-0002";

  private static TestServer server;
  private static DesiderataClient engineer;

  @BeforeAll
  static void start() throws Exception {
    server = TestServer.start();
    engineer = client(ML_ENGINEER_KEY);
  }

  @AfterAll
  static void stop() throws Exception {
    if (engineer != null) engineer.close();
    if (server != null) server.close();
  }

  private static DesiderataClient client(String key) {
    var builder = DesiderataClient.builder(server.address).plaintext().defaultTimeout(Duration.ofSeconds(60));
    return (key == null ? builder : builder.apiKey(key)).build();
  }

  private static ExplainRequest attribution(Instance instance) {
    return ExplainRequest.newBuilder()
        .setModel("credit")
        .setInstance(instance)
        .setKind(ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION)
        .setPurpose("debugging")
        .setConsumption(Consumption.CONSUMPTION_STATIC)
        .build();
  }

  private static ExplainBatchRequest attributions(String purpose, List<Instance> instances) {
    return ExplainBatchRequest.newBuilder()
        .setModel("credit")
        .addAllInstances(instances)
        .setKind(ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION)
        .setPurpose(purpose)
        .setConsumption(Consumption.CONSUMPTION_STATIC)
        .build();
  }

  /** The demo applicant asking for {@code amount}. */
  private static Instance applicantAsking(double amount) {
    var applicant = Explain.applicant().toBuilder();
    applicant.getFeaturesBuilderList().stream()
        .filter(f -> f.getName().equals("amount"))
        .forEach(f -> f.setValue(Instances.value(amount)));
    return applicant.build();
  }

  private static List<Map.Entry<String, Double>> attributionValues(Explanation explanation) {
    return explanation.getFeatureAttribution().getAttributionsList().stream()
        .map(a -> Map.entry(a.getFeature(), a.getValue()))
        .toList();
  }

  @Test
  void roundRobinClientsReachTheServerThroughTheDnsResolver() throws Exception {
    try (var balanced =
        DesiderataClient.builder("dns:///" + server.address)
            .plaintext()
            .apiKey(ML_ENGINEER_KEY)
            .loadBalancing("round_robin")
            .defaultTimeout(Duration.ofSeconds(60))
            .build()) {
      var explanation = balanced.explanations().explain(attribution(Explain.applicant())).getExplanation();
      assertFalse(explanation.getFeatureAttribution().getAttributionsList().isEmpty());
    }
    assertThrows(IllegalArgumentException.class, () -> DesiderataClient.builder("x").loadBalancing("random"));
  }

  @Test
  void explainReturnsAttributionsWithADecision() {
    var explanation = engineer.explanations().explain(attribution(Explain.applicant())).getExplanation();
    assertEquals(ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION, explanation.getKind());
    var attributions = explanation.getFeatureAttribution().getAttributionsList();
    assertFalse(attributions.isEmpty(), "no attributions");
    attributions.forEach(a -> assertFalse(a.getFeature().isEmpty()));
    assertFalse(explanation.getDisclosure().getDecisionId().isEmpty(), "no policy decision id");
  }

  @Test
  void anInstanceOfJavaValuesIsExplained() {
    // Every kind and several Java types per kind, in the card's order (a LinkedHashMap keeps it).
    Map<String, Object> features = new LinkedHashMap<>();
    features.put("seniority", (short) 9);
    features.put("home", "rent");
    features.put("time", 60L);
    features.put("age", BigInteger.valueOf(30));
    features.put("marital", "married");
    features.put("records", false);
    features.put("job", "freelance");
    features.put("expenses", 73f);
    features.put("income", new BigDecimal("129"));
    features.put("assets", 0.0);
    features.put("debt", 0.0);
    features.put("amount", 800.0);
    features.put("price", 846.0);
    var instance = Instances.of(features);
    assertEquals(Explain.applicant(), instance);
    var explanation = engineer.explanations().explain(attribution(instance)).getExplanation();
    var explained =
        explanation.getFeatureAttribution().getAttributionsList().stream().map(a -> a.getFeature()).toList();
    assertEquals(features.keySet(), Set.copyOf(explained));
  }

  @Test
  void explainBatchAnswersEachRowAsIfAskedAlone() {
    var rows = List.of(applicantAsking(500.0), applicantAsking(1500.0), applicantAsking(4000.0));
    assertEquals(3, Set.copyOf(rows).size(), "three different rows");
    List<Explanation> batch = engineer.explainBatch(attributions("debugging", rows));
    assertEquals(rows.size(), batch.size(), "one explanation per row");
    assertEquals(3, batch.stream().map(SmokeTest::attributionValues).distinct().count(), "three different answers");
    for (int i = 0; i < rows.size(); i++) {
      var alone = engineer.explanations().explain(attribution(rows.get(i))).getExplanation();
      assertFalse(attributionValues(alone).isEmpty(), "no attributions for row " + i);
      assertEquals(attributionValues(alone), attributionValues(batch.get(i)), "row " + i);
    }
  }

  @Test
  void anInvalidRowFailsTheWholeBatchNamingItsField() {
    var bogus =
        Explain.applicant().toBuilder()
            .addFeatures(Feature.newBuilder().setName("bogus").setValue(Instances.value(1.0)))
            .build();
    var e =
        assertThrows(
            StatusRuntimeException.class,
            () -> engineer.explainBatch(attributions("debugging", List.of(Explain.applicant(), bogus))));
    var details = ErrorDetails.from(e);
    assertEquals(Status.Code.INVALID_ARGUMENT, details.code());
    var fields = details.badRequest().stream().map(ErrorDetails.FieldViolation::field).toList();
    assertTrue(fields.contains("instances[1].features[bogus]"), "field violations: " + details.badRequest());
  }

  @Test
  void anEndUserMayNotBatchSubmittedInstances() throws Exception {
    var request = attributions("transparency", List.of(Explain.applicant(), applicantAsking(1500.0)));
    try (var endUser = client(END_USER_KEY)) {
      var e = assertThrows(StatusRuntimeException.class, () -> endUser.explainBatch(request));
      assertEquals(Status.Code.PERMISSION_DENIED, ErrorDetails.from(e).code());
    }
  }

  @Test
  void explainDecisionsAnswersEachRecordedDecisionInOrder() {
    // Subjects of their own, so the listing tests' subjects see none of these decisions.
    List<String> ids = List.of(predictFor("applicant-batch-a"), predictFor("applicant-batch-b"));
    assertEquals(2, Set.copyOf(ids).size(), "two different decisions");
    List<Explanation> batch = engineer.explainDecisions(ids, "debugging", null);
    assertEquals(2, batch.size(), "one explanation per decision");
    assertEquals(ids, batch.stream().map(Explanation::getRecordedDecisionId).toList(), "not in request order");
    for (int i = 0; i < batch.size(); i++) {
      assertTrue(batch.get(i).getFeatureAttribution().getAttributionsCount() > 0, "no attributions for " + i);
    }

    var e =
        assertThrows(
            StatusRuntimeException.class,
            () -> engineer.explainDecisions(List.of(ids.get(0), "rec_doesnotexist"), "debugging", null));
    assertEquals(Status.Code.NOT_FOUND, e.getStatus().getCode());
    String description = e.getStatus().getDescription();
    assertTrue(
        description != null && description.contains("decision_ids[1]"), "status description: " + description);
  }

  @Test
  void capabilitiesReportRoleAndKinds() {
    var caps =
        engineer
            .explanations()
            .getCapabilities(
                GetCapabilitiesRequest.newBuilder()
                    .setModel("credit")
                    .setPurpose("debugging")
                    .setConsumption(Consumption.CONSUMPTION_STATIC)
                    .build());
    assertEquals("ml_engineer", caps.getRole());
    assertTrue(
        caps.getCapabilitiesList().stream()
            .anyMatch(c -> c.getKind() == ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION));
  }

  @Test
  void explainDecisionExplainsAPrediction() {
    var predicted =
        engineer
            .models()
            .predict(
                PredictRequest.newBuilder()
                    .setModel("credit")
                    .setInstance(Explain.applicant())
                    .setSubjectId(SUBJECT)
                    .build());
    assertFalse(predicted.getDecisionId().isEmpty());
    assertTrue(predicted.getPrediction().getProbabilitiesCount() > 0);
    var explanation =
        engineer
            .explanations()
            .explainDecision(
                ExplainDecisionRequest.newBuilder()
                    .setDecisionId(predicted.getDecisionId())
                    .setKind(ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION)
                    .setPurpose("debugging")
                    .setConsumption(Consumption.CONSUMPTION_STATIC)
                    .build())
            .getExplanation();
    assertEquals(predicted.getDecisionId(), explanation.getRecordedDecisionId());
    assertTrue(explanation.getFeatureAttribution().getAttributionsCount() > 0);
  }

  private static String predictFor(String subject) {
    var predicted =
        engineer
            .models()
            .predict(
                PredictRequest.newBuilder()
                    .setModel("credit")
                    .setInstance(Explain.applicant())
                    .setSubjectId(subject)
                    .build());
    assertFalse(predicted.getDecisionId().isEmpty(), "no decision id");
    return predicted.getDecisionId();
  }

  @Test
  void anEndUserListsTheirOwnDecisionsNewestFirst() throws Exception {
    // Other tests may record decisions about SUBJECT too (earlier): the new ones come first.
    List<String> recorded = new ArrayList<>();
    for (int i = 0; i < 3; i++) {
      recorded.add(predictFor(SUBJECT));
    }
    String others = predictFor(OTHER_SUBJECT);

    try (var endUser = client(END_USER_KEY)) {
      // No subject_id: the end user's own; pages of 2, so 3 decisions take more than one page.
      List<RecordedDecision> own =
          endUser.decisions(
              ListDecisionsRequest.newBuilder().setModel("credit").setPurpose("transparency").setPageSize(2).build());
      var ids = own.stream().map(RecordedDecision::getDecisionId).toList();
      assertTrue(ids.size() >= 3, "only " + ids.size() + " decisions: pages not followed");
      assertEquals(List.of(recorded.get(2), recorded.get(1), recorded.get(0)), ids.subList(0, 3), "not newest first");
      assertFalse(ids.contains(others), "another subject's decision listed");
      for (var d : own) {
        assertEquals("credit", d.getModel());
        assertTrue(Set.of("good", "bad").contains(d.getPredictedClass()), "class " + d.getPredictedClass());
      }

      var refused =
          assertThrows(
              StatusRuntimeException.class,
              () ->
                  endUser.decisions(
                      ListDecisionsRequest.newBuilder()
                          .setModel("credit")
                          .setPurpose("transparency")
                          .setSubjectId(OTHER_SUBJECT)
                          .build()));
      assertEquals(Status.Code.PERMISSION_DENIED, ErrorDetails.from(refused).code());
    }

    try (var expert = client(DOMAIN_EXPERT_KEY)) {
      var contested =
          expert.decisions(
              ListDecisionsRequest.newBuilder()
                  .setModel("credit")
                  .setPurpose("contest")
                  .setSubjectId(OTHER_SUBJECT)
                  .build());
      assertEquals(
          List.of(others), contested.stream().map(RecordedDecision::getDecisionId).toList(), "contest listing");
    }
  }

  @Test
  void noCredentialsIsUnauthenticated() throws Exception {
    try (var anonymous = client(null)) {
      var e =
          assertThrows(
              StatusRuntimeException.class,
              () -> anonymous.explanations().explain(attribution(Explain.applicant())));
      assertEquals(Status.Code.UNAUTHENTICATED, ErrorDetails.from(e).code());
    }
  }

  @Test
  void unknownAndMissingFeaturesAreFieldViolations() {
    var instance =
        Explain.applicant().toBuilder()
            .removeFeatures(0) // "seniority"
            .addFeatures(Feature.newBuilder().setName("shoe_size").setValue(Instances.value(42.0)))
            .build();
    var e =
        assertThrows(StatusRuntimeException.class, () -> engineer.explanations().explain(attribution(instance)));
    var details = ErrorDetails.from(e);
    assertEquals(Status.Code.INVALID_ARGUMENT, details.code());
    assertFalse(details.badRequest().isEmpty(), "no field violations decoded");
    for (var v : details.badRequest()) {
      assertFalse(v.field().isEmpty());
      assertFalse(v.description().isEmpty());
    }
  }

  @Test
  void feedbackIsAuditedAndTheRegulatorReadsEveryPage() throws Exception {
    // The other tests share this server's audit log: the query reads only the engineer's records
    // from this test on, a few pages whatever ran before.
    var since = Timestamp.newBuilder().setSeconds(Instant.now().getEpochSecond() - 1).build();
    var explanation = engineer.explanations().explain(attribution(Explain.applicant())).getExplanation();
    String explained = explanation.getDisclosure().getDecisionId();
    assertFalse(explained.isEmpty(), "no policy decision id");
    var feedback =
        engineer
            .explanations()
            .submitFeedback(
                SubmitFeedbackRequest.newBuilder()
                    .setModel("credit")
                    .setDecisionId(explained)
                    .setExplanationId(explanation.getExplanationId())
                    .setVerdict(FeedbackVerdict.FEEDBACK_VERDICT_AGREE)
                    .setPurpose("debugging")
                    .build());
    assertFalse(feedback.getDecisionId().isEmpty(), "feedback has no policy decision id");

    var query =
        QueryAuditRequest.newBuilder()
            .setModel("credit")
            .setPurpose("audit")
            .setRole("ml_engineer")
            .setSince(since)
            .setPageSize(2)
            .build();
    var refused = assertThrows(StatusRuntimeException.class, () -> engineer.audit().queryAudit(query));
    assertEquals(Status.Code.PERMISSION_DENIED, ErrorDetails.from(refused).code());

    try (var regulator = client(REGULATOR_KEY)) {
      List<AuditEntry> entries = regulator.auditEntries(query);
      // The explanation, the feedback and the refused read: more than one page of 2.
      assertTrue(entries.size() > 2, "only " + entries.size() + " entries: pages not followed");
      var ids = entries.stream().map(AuditEntry::getDecisionId).toList();
      assertTrue(ids.contains(explained), "explanation " + explained + " not in the audit log");
      assertTrue(ids.contains(feedback.getDecisionId()), "feedback decision not in the audit log");
      for (int i = 1; i < entries.size(); i++) {
        assertTrue(
            entries.get(i).getSeq() > entries.get(i - 1).getSeq(),
            "seq " + entries.get(i).getSeq() + " after " + entries.get(i - 1).getSeq());
      }
      var verified =
          regulator
              .audit()
              .verifyAudit(VerifyAuditRequest.newBuilder().setModel("credit").setPurpose("audit").build());
      assertTrue(verified.getOk(), "audit chain broken: " + verified.getProblem());
      assertTrue(verified.getRecords() >= entries.size());
    }
  }
}
