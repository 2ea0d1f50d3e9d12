package dev.desiderata.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.desiderata.examples.Explain;
import dev.desiderata.v1.Feature;
import dev.desiderata.v1.FeatureValue;
import dev.desiderata.v1.Instance;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.time.LocalDate;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/** Instances against hand-built messages (no server needed). */
class InstancesTest {
  private enum Home { RENT }

  private static FeatureValue integer(long v) {
    return FeatureValue.newBuilder().setInteger(v).build();
  }

  private static FeatureValue number(double v) {
    return FeatureValue.newBuilder().setNumber(v).build();
  }

  private static FeatureValue category(String v) {
    return FeatureValue.newBuilder().setCategory(v).build();
  }

  private static Feature feature(String name, FeatureValue v) {
    return Feature.newBuilder().setName(name).setValue(v).build();
  }

  private static List<String> names(Instance instance) {
    return instance.getFeaturesList().stream().map(Feature::getName).toList();
  }

  @Test
  void booleanAndCategory() {
    assertEquals(FeatureValue.newBuilder().setBoolean(true).build(), Instances.value(true));
    assertEquals(FeatureValue.newBuilder().setBoolean(false).build(), Instances.value(Boolean.FALSE));
    assertEquals(category("rent"), Instances.value("rent"));
    assertEquals(category(""), Instances.value(""));
    assertEquals(FeatureValue.KindCase.CATEGORY, Instances.value("").getKindCase());
  }

  @Test
  void everyIntegerWidthIsAnInteger() {
    assertEquals(integer(-128), Instances.value((byte) -128));
    assertEquals(integer(32767), Instances.value((short) 32767));
    assertEquals(integer(30), Instances.value(30));
    assertEquals(integer(Integer.MIN_VALUE), Instances.value(Integer.MIN_VALUE));
    assertEquals(integer(Long.MAX_VALUE), Instances.value(Long.MAX_VALUE));
    assertEquals(integer(Long.MIN_VALUE), Instances.value(Long.MIN_VALUE));
    assertEquals(integer(0), Instances.value(0L));
    assertEquals(FeatureValue.KindCase.INTEGER, Instances.value(0).getKindCase());
  }

  @Test
  void bigIntegerThatFitsInALongIsAnInteger() {
    assertEquals(integer(42), Instances.value(BigInteger.valueOf(42)));
    assertEquals(integer(Long.MAX_VALUE), Instances.value(BigInteger.valueOf(Long.MAX_VALUE)));
    assertEquals(integer(Long.MIN_VALUE), Instances.value(BigInteger.valueOf(Long.MIN_VALUE)));
  }

  @Test
  void bigIntegerBeyondALongIsRejected() {
    var above = BigInteger.valueOf(Long.MAX_VALUE).add(BigInteger.ONE);
    var below = BigInteger.valueOf(Long.MIN_VALUE).subtract(BigInteger.ONE);
    var e = assertThrows(IllegalArgumentException.class, () -> Instances.of(Map.of("debt", above)));
    assertTrue(e.getMessage().contains("\"debt\""), e.getMessage());
    assertTrue(e.getMessage().contains("9223372036854775808"), e.getMessage());
    assertThrows(IllegalArgumentException.class, () -> Instances.value(below));
    assertThrows(IllegalArgumentException.class, () -> Instances.builder().put("debt", above));
  }

  @Test
  void floatDoubleAndBigDecimalAreNumbers() {
    assertEquals(number(129.5), Instances.value(129.5));
    assertEquals(number(0.25), Instances.value(0.25f));
    assertEquals(number((double) 0.1f), Instances.value(0.1f));
    assertEquals(number(73.0), Instances.value(73.0));
    assertEquals(number(0.1), Instances.value(new BigDecimal("0.1")));
    assertEquals(number(1e300), Instances.value(new BigDecimal("1E+300")));
    assertEquals(FeatureValue.KindCase.NUMBER, Instances.value(0.0).getKindCase());
    assertTrue(Double.isNaN(Instances.value(Double.NaN).getNumber()));
    assertEquals(number(Double.NEGATIVE_INFINITY), Instances.value(Double.NEGATIVE_INFINITY));
  }

  @Test
  void bigDecimalBeyondADoubleIsRejected() {
    var e = assertThrows(IllegalArgumentException.class, () -> Instances.value(new BigDecimal("1E+400")));
    assertTrue(e.getMessage().contains("BigDecimal"), e.getMessage());
  }

  @Test
  void ofKeepsTheMapsOrder() {
    var features = new LinkedHashMap<String, Object>();
    features.put("seniority", 9);
    features.put("home", "rent");
    features.put("records", false);
    features.put("income", 129.0);
    features.put("age", 30L);
    var expected =
        Instance.newBuilder()
            .addFeatures(feature("seniority", integer(9)))
            .addFeatures(feature("home", category("rent")))
            .addFeatures(feature("records", FeatureValue.newBuilder().setBoolean(false).build()))
            .addFeatures(feature("income", number(129)))
            .addFeatures(feature("age", integer(30)))
            .build();
    assertEquals(expected, Instances.of(features));

    var many = new LinkedHashMap<String, Object>();
    for (int i = 40; i > 0; i--) {
      many.put("f" + i, i);
    }
    assertEquals(List.copyOf(many.keySet()), names(Instances.of(many)));
    assertEquals(Instance.getDefaultInstance(), Instances.of(Map.of()));
  }

  @Test
  void builderKeepsInsertionOrderAndReplacesInPlace() {
    var builder = Instances.builder().put("b", 1).put("a", "x").put("c", 2.0).put("a", "y");
    var instance = builder.build();
    assertEquals(List.of("b", "a", "c"), names(instance));
    assertEquals(integer(1), instance.getFeatures(0).getValue());
    assertEquals(category("y"), instance.getFeatures(1).getValue());
    assertEquals(number(2.0), instance.getFeatures(2).getValue());
    assertEquals(instance, builder.build());
    assertEquals(Instance.getDefaultInstance(), Instances.builder().build());
  }

  @Test
  void theExampleApplicantIsTheHandBuiltOne() {
    var expected =
        Instance.newBuilder()
            .addFeatures(feature("seniority", integer(9)))
            .addFeatures(feature("home", category("rent")))
            .addFeatures(feature("time", integer(60)))
            .addFeatures(feature("age", integer(30)))
            .addFeatures(feature("marital", category("married")))
            .addFeatures(feature("records", FeatureValue.newBuilder().setBoolean(false).build()))
            .addFeatures(feature("job", category("freelance")))
            .addFeatures(feature("expenses", number(73)))
            .addFeatures(feature("income", number(129)))
            .addFeatures(feature("assets", number(0)))
            .addFeatures(feature("debt", number(0)))
            .addFeatures(feature("amount", number(800)))
            .addFeatures(feature("price", number(846)))
            .build();
    assertEquals(expected, Explain.applicant());
  }

  @Test
  void nullIsRejectedNamingTheFeature() {
    var features = new HashMap<String, Object>();
    features.put("income", null);
    var e = assertThrows(IllegalArgumentException.class, () -> Instances.of(features));
    assertTrue(e.getMessage().contains("\"income\""), e.getMessage());
    assertTrue(e.getMessage().contains("null"), e.getMessage());
    e = assertThrows(IllegalArgumentException.class, () -> Instances.builder().put("age", null));
    assertTrue(e.getMessage().contains("\"age\""), e.getMessage());
    assertThrows(IllegalArgumentException.class, () -> Instances.value(null));
  }

  @Test
  void unsupportedTypesAreRejectedNamingFeatureAndType() {
    var e =
        assertThrows(
            IllegalArgumentException.class, () -> Instances.of(Map.of("since", LocalDate.of(2020, 1, 1))));
    assertTrue(e.getMessage().contains("\"since\""), e.getMessage());
    assertTrue(e.getMessage().contains("java.time.LocalDate"), e.getMessage());

    e = assertThrows(IllegalArgumentException.class, () -> Instances.builder().put("home", Home.RENT));
    assertTrue(e.getMessage().contains("\"home\""), e.getMessage());
    assertTrue(e.getMessage().contains("Home"), e.getMessage());

    for (Object v : List.of('x', new AtomicInteger(1), new StringBuilder("rent"), new Object(), List.of(1))) {
      e = assertThrows(IllegalArgumentException.class, () -> Instances.value(v));
      assertTrue(e.getMessage().contains(v.getClass().getName()), e.getMessage());
    }
  }

  @Test
  void nullNamesAreRejected() {
    var features = new HashMap<String, Object>();
    features.put(null, 1);
    assertThrows(IllegalArgumentException.class, () -> Instances.of(features));
    assertThrows(IllegalArgumentException.class, () -> Instances.builder().put(null, 1));
    assertThrows(NullPointerException.class, () -> Instances.of(null));
  }
}
