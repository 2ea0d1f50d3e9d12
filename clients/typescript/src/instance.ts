/**
 * Building an `Instance` from plain values, with the Python SDK's rules
 * (`desiderata.client.instance`) as far as JavaScript's types allow:
 *
 * - `boolean` → `boolean`; `string` → `category`;
 * - `number` → `integer` when a safe integer (`Number.isSafeInteger`), else `number`
 *   (fractions, NaN, ±Infinity, integral values beyond ±(2^53 - 1));
 * - `bigint` → `integer` (RangeError unless within ±(2^53 - 1), see below);
 * - `asNumber(v)` → `number`, even when integral;
 * - anything else (null, undefined, objects, arrays, ...) → TypeError naming the feature.
 *
 * JavaScript has one number type, so `3` and `3.0` are the same value: an integral
 * number goes as `integer`, which the server accepts for `number` features too and
 * requires for `integer` features. Wrap it in `asNumber` to send a float anyway.
 * NaN and ±Infinity are sent as they are; the server rejects them with
 * INVALID_ARGUMENT naming the feature.
 *
 * int64 fields are a JS `number` in the generated code (ts-proto without
 * `forceLong`), exact up to 2^53 - 1 and refused beyond that when decoded, so a
 * `bigint` must be a safe integer: one outside int64, or inside int64 but beyond
 * ±(2^53 - 1), throws a RangeError rather than being rounded. For the same reason an
 * integral `number` beyond ±(2^53 - 1) (e.g. 1e20, which no longer stands for one
 * exact integer) goes as a float `number`, as a Python float would.
 */
import type { Feature, FeatureValue, Instance } from "./gen/desiderata/v1/types.js";

/** A value to send as a floating-point `number` even when integral; made by {@link asNumber}. */
export class AsNumber {
  readonly #brand = true; // nominal: a plain `{ value: 3 }` is not an AsNumber

  /** Use {@link asNumber}. */
  constructor(readonly value: number) {
    if (typeof value !== "number") throw new TypeError(`asNumber expects a number, got ${describe(value)}`);
  }
}

/** `v` sent as a floating-point `number` feature value, even when integral: `asNumber(3)`. */
export function asNumber(v: number): AsNumber {
  return new AsNumber(v);
}

/** What {@link instance} and {@link featureValue} accept as one feature's value. */
export type FeatureInput = boolean | number | bigint | string | AsNumber;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const SAFE_MIN = BigInt(Number.MIN_SAFE_INTEGER);
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);

/** The typed wire value of one plain value; throws TypeError / RangeError (see the module's rules). */
export function featureValue(v: FeatureInput): FeatureValue {
  return convert(v, undefined);
}

/**
 * An Instance with one Feature per entry, in the object's property order, which is
 * insertion order for names that are not integer-like ("1", "42" come first, in
 * ascending order, as for any JS object); pass a Map to keep any order exactly.
 * Throws TypeError naming the feature for a value of another type (null, undefined,
 * objects, arrays, ...), RangeError for a bigint out of range.
 */
export function instance(features: Readonly<Record<string, FeatureInput>> | ReadonlyMap<string, FeatureInput>): Instance {
  if (typeof features !== "object" || features === null || Array.isArray(features)) {
    throw new TypeError(`instance expects an object or a Map of feature values, got ${describe(features)}`);
  }
  const entries = features instanceof Map ? features.entries() : Object.entries(features);
  const out: Feature[] = [];
  for (const [name, v] of entries) out.push({ name, value: convert(v, name) });
  return { features: out };
}

function convert(v: unknown, name: string | undefined): FeatureValue {
  const where = name === undefined ? "feature value" : `feature ${JSON.stringify(name)}`;
  switch (typeof v) {
    case "boolean":
      return { boolean: v };
    case "string":
      return { category: v };
    case "number":
      return Number.isSafeInteger(v) ? { integer: v } : { number: v };
    case "bigint":
      if (v < INT64_MIN || v > INT64_MAX) throw new RangeError(`${where}: ${v} does not fit in int64`);
      if (v < SAFE_MIN || v > SAFE_MAX) {
        throw new RangeError(
          `${where}: ${v} is beyond ±(2^53 - 1), which the SDK's int64 (a JS number) cannot carry exactly`,
        );
      }
      return { integer: Number(v) };
    case "object":
      if (v instanceof AsNumber) return { number: v.value };
  }
  throw new TypeError(
    `${where}: unsupported value ${describe(v)} (expected boolean, number, bigint, string or asNumber(...))`,
  );
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "array";
  return typeof v === "object" ? (v.constructor?.name ?? "object") : typeof v;
}
