package desiderata

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed call's status with its rich details decoded.
// Fields whose detail the server did not send are nil.
type Error struct {
	Code    codes.Code
	Message string
	// Per-field problems of an INVALID_ARGUMENT request.
	BadRequest []FieldViolation
	// Machine-readable reason, e.g. the policy decision behind PERMISSION_DENIED.
	ErrorInfo *ErrorInfo
	// Exceeded rate limits or budgets of RESOURCE_EXHAUSTED.
	QuotaFailure []QuotaViolation
	// How long to wait before retrying, when the server says so.
	RetryDelay *time.Duration
}

// FieldViolation is one entry of google.rpc.BadRequest.
type FieldViolation struct {
	Field       string
	Description string
	Reason      string
}

// ErrorInfo is google.rpc.ErrorInfo.
type ErrorInfo struct {
	Reason   string
	Domain   string
	Metadata map[string]string
}

// QuotaViolation is one entry of google.rpc.QuotaFailure.
type QuotaViolation struct {
	Subject     string
	Description string
}

func (e *Error) Error() string { return "desiderata: " + e.Code.String() + ": " + e.Message }

// DecodeError returns the decoded status of err, or nil when err is nil.
// An error that carries no gRPC status decodes as codes.Unknown.
func DecodeError(err error) *Error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	out := &Error{Code: st.Code(), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.BadRequest = append(out.BadRequest, FieldViolation{
					Field: v.GetField(), Description: v.GetDescription(), Reason: v.GetReason(),
				})
			}
		case *errdetails.ErrorInfo:
			out.ErrorInfo = &ErrorInfo{Reason: d.GetReason(), Domain: d.GetDomain(), Metadata: d.GetMetadata()}
		case *errdetails.QuotaFailure:
			for _, v := range d.GetViolations() {
				out.QuotaFailure = append(out.QuotaFailure, QuotaViolation{
					Subject: v.GetSubject(), Description: v.GetDescription(),
				})
			}
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				delay := d.GetRetryDelay().AsDuration()
				out.RetryDelay = &delay
			}
		}
	}
	return out
}
