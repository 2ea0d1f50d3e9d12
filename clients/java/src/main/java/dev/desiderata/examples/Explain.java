package dev.desiderata.examples;

import dev.desiderata.client.DesiderataClient;
import dev.desiderata.client.ErrorDetails;
import dev.desiderata.v1.Consumption;
import dev.desiderata.v1.ExplainRequest;
import dev.desiderata.v1.ExplanationKind;
import dev.desiderata.v1.Feature;
import dev.desiderata.v1.FeatureValue;
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
    return Instance.newBuilder()
        .addFeatures(integer("seniority", 9))
        .addFeatures(category("home", "rent"))
        .addFeatures(integer("time", 60))
        .addFeatures(integer("age", 30))
        .addFeatures(category("marital", "married"))
        .addFeatures(feature("records", FeatureValue.newBuilder().setBoolean(false)))
        .addFeatures(category("job", "freelance"))
        .addFeatures(number("expenses", 73))
        .addFeatures(number("income", 129))
        .addFeatures(number("assets", 0))
        .addFeatures(number("debt", 0))
        .addFeatures(number("amount", 800))
        .addFeatures(number("price", 846))
        .build();
  }

  private static Feature feature(String name, FeatureValue.Builder value) {
    return Feature.newBuilder().setName(name).setValue(value).build();
  }

  private static Feature number(String name, double v) {
    return feature(name, FeatureValue.newBuilder().setNumber(v));
  }

  private static Feature integer(String name, long v) {
    return feature(name, FeatureValue.newBuilder().setInteger(v));
  }

  private static Feature category(String name, String v) {
    return feature(name, FeatureValue.newBuilder().setCategory(v));
  }
}
