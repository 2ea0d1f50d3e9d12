package dev.desiderata.examples;

import dev.desiderata.client.DesiderataClient;
import dev.desiderata.client.ErrorDetails;
import dev.desiderata.client.Instances;
import dev.desiderata.v1.Consumption;
import dev.desiderata.v1.ExplainRequest;
import dev.desiderata.v1.ExplanationKind;
import dev.desiderata.v1.Instance;
import io.grpc.StatusRuntimeException;

/**
 * Asks a desiderata server why the demo model "credit" scores one applicant as it does.
 *
 * <p>{@code mvn -q compile exec:java -Dexec.args="127.0.0.1:50051 demo-ml_engineer-key"} (plaintext;
 * local demo).
 */
public final class Explain {
  private Explain() {}

  public static void main(String[] args) throws InterruptedException {
    String target = args.length > 0 ? args[0] : "127.0.0.1:50051";
    String key = args.length > 1 ? args[1] : "demo-ml_engineer-key";
    try (var client = DesiderataClient.builder(target).apiKey(key).plaintext().build()) {
      var request =
          ExplainRequest.newBuilder()
              .setModel("credit")
              .setInstance(applicant())
              .setKind(ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION)
              .setPurpose("debugging")
              .setConsumption(Consumption.CONSUMPTION_STATIC)
              .build();
      var explanation = client.explanations().explain(request).getExplanation();
      System.out.printf(
          "%s predicts \"%s\" (tier %s)%n",
          explanation.getModel(), explanation.getPrediction().getLabel(), explanation.getDisclosure().getTier());
      for (var a : explanation.getFeatureAttribution().getAttributionsList()) {
        System.out.printf("%3d  %-12s %+.4f%n", a.getRank(), a.getFeature(), a.getValue());
      }
      explanation.getNarrativeList().forEach(System.out::println);
    } catch (StatusRuntimeException e) {
      var details = ErrorDetails.from(e);
      details.badRequest().forEach(v -> System.err.printf("  %s: %s%n", v.field(), v.description()));
      System.err.println(details.code() + ": " + details.message());
      System.exit(1);
    }
  }

  /** A complete instance of the demo model "credit". */
  public static Instance applicant() {
    return Instances.builder()
        .put("seniority", 9)
        .put("home", "rent")
        .put("time", 60)
        .put("age", 30)
        .put("marital", "married")
        .put("records", false)
        .put("job", "freelance")
        .put("expenses", 73.0) // 73.0, not 73: the model card types these as numbers
        .put("income", 129.0)
        .put("assets", 0.0)
        .put("debt", 0.0)
        .put("amount", 800.0)
        .put("price", 846.0)
        .build();
  }
}
