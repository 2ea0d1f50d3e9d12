package dev.desiderata.client;

import dev.desiderata.v1.FeatureValue;
import dev.desiderata.v1.Instance;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;

/**
 * Builds an {@link Instance} from plain Java values, by the Python SDK's rules:
 *
 * <ul>
 *   <li>{@link Boolean} is a boolean;
 *   <li>{@link Byte}, {@link Short}, {@link Integer}, {@link Long} and a {@link BigInteger} that fits
 *       in a long are an integer;
 *   <li>{@link Float}, {@link Double} and a {@link BigDecimal} within the range of a double are a
 *       number;
 *   <li>{@link String} is a category.
 * </ul>
 *
 * <p>Anything else, null and enums included, throws {@link IllegalArgumentException} naming the
 * feature and the type: a value is never converted by guesswork. Write {@code 73.0}, not {@code 73},
 * for a feature the model reads as a number.
 *
 * <pre>{@code
 * Instance applicant = Instances.builder().put("age", 30).put("home", "rent").put("income", 129.0).build();
 * }</pre>
 */
public final class Instances {
  private static final String WANTED =
      "want Boolean, Byte, Short, Integer, Long, BigInteger, Float, Double, BigDecimal or String";
  private static final BigInteger LONG_MIN = BigInteger.valueOf(Long.MIN_VALUE);
  private static final BigInteger LONG_MAX = BigInteger.valueOf(Long.MAX_VALUE);

  private Instances() {}

  /**
   * An Instance with one Feature per map entry, in the map's iteration order: a {@link
   * LinkedHashMap} keeps insertion order, {@link Map#of} has none.
   *
   * @throws IllegalArgumentException when a name is null or a value has an unsupported type
   */
  public static Instance of(Map<String, ?> features) {
    Objects.requireNonNull(features, "features");
    Instance.Builder out = Instance.newBuilder();
    for (Map.Entry<String, ?> e : features.entrySet()) {
      String name = checkName(e.getKey());
      set(out.addFeaturesBuilder().setName(name).getValueBuilder(), name, e.getValue());
    }
    return out.build();
  }

  /**
   * The typed wire value of one Java value, e.g. for a Feature added to an existing Instance.
   *
   * @throws IllegalArgumentException when {@code v} is null or has an unsupported type
   */
  public static FeatureValue value(Object v) {
    FeatureValue.Builder out = FeatureValue.newBuilder();
    set(out, null, v);
    return out.build();
  }

  /** A builder of one literal Instance: {@code Instances.builder().put("age", 30).build()}. */
  public static Builder builder() {
    return new Builder();
  }

  /** Collects features in insertion order; each value is checked as it is put. */
  public static final class Builder {
    private final Map<String, FeatureValue> features = new LinkedHashMap<>();

    private Builder() {}

    /**
     * Adds feature {@code name}, or replaces its value in place when it was already put (the server
     * rejects a feature given twice).
     *
     * @throws IllegalArgumentException when {@code name} is null or {@code value} has an unsupported
     *     type
     */
    public Builder put(String name, Object value) {
      FeatureValue.Builder out = FeatureValue.newBuilder();
      set(out, checkName(name), value);
      features.put(name, out.build());
      return this;
    }

    /** The Instance of the features put so far; the builder stays usable. */
    public Instance build() {
      Instance.Builder out = Instance.newBuilder();
      features.forEach((name, v) -> out.addFeaturesBuilder().setName(name).setValue(v));
      return out.build();
    }
  }

  private static String checkName(String name) {
    if (name == null) {
      throw new IllegalArgumentException("feature name is null");
    }
    return name;
  }

  /** Sets the one field of {@code out} that {@code v}'s type maps to; {@code name} is for errors. */
  private static void set(FeatureValue.Builder out, String name, Object v) {
    if (v instanceof Boolean b) {
      out.setBoolean(b);
    } else if (v instanceof Integer || v instanceof Long || v instanceof Short || v instanceof Byte) {
      out.setInteger(((Number) v).longValue());
    } else if (v instanceof BigInteger i) {
      if (i.compareTo(LONG_MIN) < 0 || i.compareTo(LONG_MAX) > 0) {
        throw new IllegalArgumentException(where(name) + "BigInteger " + i + " does not fit in a long");
      }
      out.setInteger(i.longValue());
    } else if (v instanceof Double || v instanceof Float) {
      out.setNumber(((Number) v).doubleValue());
    } else if (v instanceof BigDecimal d) {
      double x = d.doubleValue();
      if (Double.isInfinite(x)) {
        throw new IllegalArgumentException(where(name) + "BigDecimal " + d + " is beyond the range of a double");
      }
      out.setNumber(x);
    } else if (v instanceof String s) {
      out.setCategory(s);
    } else {
      String type = v == null ? "null" : v.getClass().getName();
      throw new IllegalArgumentException(where(name) + "unsupported value type " + type + "; " + WANTED);
    }
  }

  private static String where(String name) {
    return name == null ? "" : "feature \"" + name + "\": ";
  }
}
