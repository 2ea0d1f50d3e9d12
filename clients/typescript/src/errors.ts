/**
 * Decoding of a failed call's rich status: the `grpc-status-details-bin`
 * trailer is a serialized google.rpc.Status whose details are Any-packed
 * BadRequest, ErrorInfo, QuotaFailure and RetryInfo messages.
 */
import { status as Code, type ServiceError } from "@grpc/grpc-js";

import { Status } from "./gen/google/rpc/status.js";
import { BadRequest, ErrorInfo, QuotaFailure, RetryInfo } from "./gen/google/rpc/error_details.js";


export interface FieldViolation {
  field: string;
  description: string;
  reason: string;
}

export interface QuotaViolation {
  subject: string;
  description: string;
}

/** A failed call's status with its rich details decoded; absent details are undefined. */
export class DesiderataError extends Error {
  override readonly name = "DesiderataError";

  constructor(
    readonly code: Code,
    readonly details: string,
    /** Per-field problems of an INVALID_ARGUMENT request. */
    readonly badRequest?: FieldViolation[],
    /** Machine-readable reason, e.g. the policy decision behind PERMISSION_DENIED. */
    readonly errorInfo?: { reason: string; domain: string; metadata: Record<string, string> },
    /** Exceeded rate limits or budgets of RESOURCE_EXHAUSTED. */
    readonly quotaFailure?: QuotaViolation[],
    /** Milliseconds to wait before retrying, when the server says so. */
    readonly retryDelayMs?: number,
  ) {
    super(`${Code[code]}: ${details}`);
  }
}

function isServiceError(err: unknown): err is ServiceError {
  return typeof err === "object" && err !== null && "code" in err && "metadata" in err;
}

/** Decodes a grpc-js error; any other value becomes an UNKNOWN error. */
export function decodeError(err: unknown): DesiderataError {
  if (!isServiceError(err)) return new DesiderataError(Code.UNKNOWN, String(err));
  const raw = err.metadata?.get("grpc-status-details-bin")[0];
  if (raw === undefined) return new DesiderataError(err.code, err.details);
  const st = Status.decode(typeof raw === "string" ? Buffer.from(raw, "base64") : raw);
  let badRequest: FieldViolation[] | undefined;
  let errorInfo: DesiderataError["errorInfo"];
  let quotaFailure: QuotaViolation[] | undefined;
  let retryDelayMs: number | undefined;
  for (const any of st.details) {
    switch (any.typeUrl.slice(any.typeUrl.lastIndexOf("/") + 1)) {
      case "google.rpc.BadRequest":
        badRequest = BadRequest.decode(any.value).fieldViolations.map(({ field, description, reason }) => ({
          field,
          description,
          reason,
        }));
        break;
      case "google.rpc.ErrorInfo": {
        const { reason, domain, metadata } = ErrorInfo.decode(any.value);
        errorInfo = { reason, domain, metadata };
        break;
      }
      case "google.rpc.QuotaFailure":
        quotaFailure = QuotaFailure.decode(any.value).violations.map(({ subject, description }) => ({
          subject,
          description,
        }));
        break;
      case "google.rpc.RetryInfo": {
        const delay = RetryInfo.decode(any.value).retryDelay;
        if (delay) retryDelayMs = delay.seconds * 1000 + Math.round(delay.nanos / 1e6);
        break;
      }
    }
  }
  return new DesiderataError(err.code, st.message || err.details, badRequest, errorInfo, quotaFailure, retryDelayMs);
}

