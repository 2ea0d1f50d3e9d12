/** decodeError against hand-built trailers (no server needed). */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";

import { decodeError } from "../src/index.js";
import { Any } from "../src/gen/google/protobuf/any.js";
import { BadRequest, ErrorInfo, QuotaFailure, RetryInfo } from "../src/gen/google/rpc/error_details.js";
import { Status } from "../src/gen/google/rpc/status.js";

function pack(typeName: string, value: Uint8Array): Any {
  return { typeUrl: `type.googleapis.com/${typeName}`, value: Buffer.from(value) };
}

function serviceError(code: status, details?: Status): ServiceError {
  const metadata = new Metadata();
  if (details) metadata.set("grpc-status-details-bin", Buffer.from(Status.encode(details).finish()));
  return Object.assign(new Error("failed"), { code, details: "failed", metadata });
}

test("decodeError reads BadRequest, ErrorInfo, QuotaFailure and RetryInfo", () => {
  const st: Status = {
    code: status.RESOURCE_EXHAUSTED,
    message: "budget spent",
    details: [
      pack(
        "google.rpc.BadRequest",
        BadRequest.encode(
          BadRequest.fromPartial({ fieldViolations: [{ field: "instance", description: "unknown", reason: "R" }] }),
        ).finish(),
      ),
      pack(
        "google.rpc.ErrorInfo",
        ErrorInfo.encode(ErrorInfo.fromPartial({ reason: "BUDGET", domain: "d", metadata: { k: "v" } })).finish(),
      ),
      pack(
        "google.rpc.QuotaFailure",
        QuotaFailure.encode(QuotaFailure.fromPartial({ violations: [{ subject: "s", description: "q" }] })).finish(),
      ),
      pack(
        "google.rpc.RetryInfo",
        RetryInfo.encode(RetryInfo.fromPartial({ retryDelay: { seconds: 1, nanos: 500_000_000 } })).finish(),
      ),
    ],
  };
  const err = decodeError(serviceError(status.RESOURCE_EXHAUSTED, st));
  assert.equal(err.code, status.RESOURCE_EXHAUSTED);
  assert.equal(err.details, "budget spent");
  assert.deepEqual(err.badRequest, [{ field: "instance", description: "unknown", reason: "R" }]);
  assert.deepEqual(err.errorInfo, { reason: "BUDGET", domain: "d", metadata: { k: "v" } });
  assert.deepEqual(err.quotaFailure, [{ subject: "s", description: "q" }]);
  assert.equal(err.retryDelayMs, 1500);
});

test("decodeError without details keeps code and message only", () => {
  const err = decodeError(serviceError(status.UNAUTHENTICATED));
  assert.equal(err.code, status.UNAUTHENTICATED);
  assert.equal(err.badRequest, undefined);
  assert.equal(err.retryDelayMs, undefined);
  assert.equal(decodeError(new Error("plain")).code, status.UNKNOWN);
});
