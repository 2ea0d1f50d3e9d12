/** instance() / featureValue() / asNumber(): plain values to typed FeatureValues (no server needed). */
import assert from "node:assert/strict";
import { test } from "node:test";

import { AsNumber, asNumber, featureValue, instance, Instance, type FeatureInput } from "../src/index.js";

test("each kind of value maps to its FeatureValue field", () => {
  assert.deepEqual(featureValue(true), { boolean: true });
  assert.deepEqual(featureValue(false), { boolean: false });
  assert.deepEqual(featureValue("rent"), { category: "rent" });
  assert.deepEqual(featureValue(""), { category: "" });
  assert.deepEqual(featureValue(9), { integer: 9 });
  assert.deepEqual(featureValue(-4), { integer: -4 });
  assert.deepEqual(featureValue(12n), { integer: 12 });
  assert.deepEqual(featureValue(129.5), { number: 129.5 });
});

test("integral numbers go as integer, fractional ones as number", () => {
  assert.deepEqual(featureValue(3.0), { integer: 3 });
  assert.deepEqual(featureValue(0), { integer: 0 });
  assert.deepEqual(featureValue(Number.MAX_SAFE_INTEGER), { integer: Number.MAX_SAFE_INTEGER });
  assert.deepEqual(featureValue(Number.MIN_SAFE_INTEGER), { integer: Number.MIN_SAFE_INTEGER });
  assert.deepEqual(featureValue(0.1), { number: 0.1 });
  assert.deepEqual(featureValue(-2.5), { number: -2.5 });
  assert.deepEqual(featureValue(1e-300), { number: 1e-300 });
  // Integral but beyond 2^53 - 1: not one exact integer any more, and beyond int64 for 1e20.
  assert.deepEqual(featureValue(2 ** 53), { number: 2 ** 53 });
  assert.deepEqual(featureValue(1e20), { number: 1e20 });
});

test("NaN and ±Infinity are passed on as numbers for the server to reject", () => {
  assert.ok(Number.isNaN(featureValue(NaN).number));
  assert.equal(featureValue(NaN).integer, undefined);
  assert.deepEqual(featureValue(Infinity), { number: Infinity });
  assert.deepEqual(featureValue(-Infinity), { number: -Infinity });
  assert.deepEqual(instance({ income: NaN }).features.map((f) => f.name), ["income"]);
});

test("a bigint must be a safe integer: out of int64 and beyond 2^53 - 1 are RangeErrors", () => {
  assert.deepEqual(featureValue(BigInt(Number.MAX_SAFE_INTEGER)), { integer: Number.MAX_SAFE_INTEGER });
  assert.deepEqual(featureValue(-BigInt(Number.MAX_SAFE_INTEGER)), { integer: -Number.MAX_SAFE_INTEGER });
  assert.throws(() => instance({ big: 2n ** 63n }), (err: unknown) => {
    assert.ok(err instanceof RangeError);
    assert.match(err.message, /feature "big": 9223372036854775808 does not fit in int64/);
    return true;
  });
  assert.throws(() => featureValue(-(2n ** 63n) - 1n), RangeError);
  assert.throws(() => instance({ big: 2n ** 53n }), /feature "big": 9007199254740992 is beyond/);
  assert.throws(() => featureValue(2n ** 63n - 1n), RangeError);
});

test("asNumber sends an integral value as a float number", () => {
  const three = asNumber(3);
  assert.ok(three instanceof AsNumber);
  assert.equal(three.value, 3);
  assert.deepEqual(featureValue(three), { number: 3 });
  assert.deepEqual(featureValue(asNumber(2.5)), { number: 2.5 });
  assert.deepEqual(instance({ amount: asNumber(800), time: 60 }).features, [
    { name: "amount", value: { number: 800 } },
    { name: "time", value: { integer: 60 } },
  ]);
  // It survives the wire as a double, not as an int64.
  const decoded = Instance.decode(Instance.encode(instance({ amount: asNumber(800) })).finish());
  assert.equal(decoded.features[0]?.value?.number, 800);
  assert.equal(decoded.features[0]?.value?.integer, undefined);
  assert.throws(() => asNumber("3" as unknown as number), /asNumber expects a number, got string/);
});

test("instance keeps the object's insertion order and encodes every kind", () => {
  const built = instance({ seniority: 9, home: "rent", records: false, income: 129.5, debt: 0n });
  assert.deepEqual(built, {
    features: [
      { name: "seniority", value: { integer: 9 } },
      { name: "home", value: { category: "rent" } },
      { name: "records", value: { boolean: false } },
      { name: "income", value: { number: 129.5 } },
      { name: "debt", value: { integer: 0 } },
    ],
  });
  const decoded = Instance.decode(Instance.encode(built).finish());
  assert.deepEqual(
    decoded.features.map((f) => [f.name, f.value?.integer ?? f.value?.number ?? f.value?.category ?? f.value?.boolean]),
    [
      ["seniority", 9],
      ["home", "rent"],
      ["records", false],
      ["income", 129.5],
      ["debt", 0],
    ],
  );
  assert.deepEqual(instance({}), { features: [] });
});

test("a Map keeps any order, including integer-like names that an object would sort first", () => {
  assert.deepEqual(instance({ b: 1, "2": 2, a: 3 }).features.map((f) => f.name), ["2", "b", "a"]);
  const ordered = new Map<string, FeatureInput>([
    ["b", 1],
    ["2", "x"],
    ["a", true],
  ]);
  assert.deepEqual(instance(ordered).features, [
    { name: "b", value: { integer: 1 } },
    { name: "2", value: { category: "x" } },
    { name: "a", value: { boolean: true } },
  ]);
});

test("null, undefined, objects and arrays are TypeErrors naming the feature", () => {
  const cases: [unknown, RegExp][] = [
    [null, /feature "age": unsupported value null/],
    [undefined, /feature "age": unsupported value undefined/],
    [{ number: 3 }, /feature "age": unsupported value Object/],
    [[1, 2], /feature "age": unsupported value array/],
    [new Date(0), /feature "age": unsupported value Date/],
    [Symbol("s"), /feature "age": unsupported value symbol/],
    [() => 1, /feature "age": unsupported value function/],
  ];
  for (const [v, message] of cases) {
    assert.throws(
      () => instance({ income: 1, age: v as FeatureInput }),
      (err: unknown) => {
        assert.ok(err instanceof TypeError, `${String(message)}: not a TypeError`);
        assert.match(err.message, message);
        return true;
      },
    );
  }
  assert.throws(() => featureValue(null as unknown as FeatureInput), /^TypeError: feature value: unsupported value null/);
  for (const bad of [null, undefined, [["a", 1]], 3]) {
    assert.throws(() => instance(bad as unknown as Record<string, FeatureInput>), /instance expects an object or a Map/);
  }
});
