package desiderata_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/desiderata-xai/desiderata/clients/go/desiderata"
)

func TestDecodeErrorReadsEveryDetail(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "budget spent").WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "instance.features[0]", Description: "unknown feature", Reason: "UNKNOWN_FEATURE"},
		}},
		&errdetails.ErrorInfo{Reason: "BUDGET", Domain: "desiderata", Metadata: map[string]string{"decision_id": "d-1"}},
		&errdetails.QuotaFailure{Violations: []*errdetails.QuotaFailure_Violation{
			{Subject: "principal:p/model:credit", Description: "lifetime queries"},
		}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	e := desiderata.DecodeError(st.Err())
	if e.Code != codes.ResourceExhausted || e.Message != "budget spent" {
		t.Errorf("code/message = %v/%q", e.Code, e.Message)
	}
	if len(e.BadRequest) != 1 || e.BadRequest[0] != (desiderata.FieldViolation{
		Field: "instance.features[0]", Description: "unknown feature", Reason: "UNKNOWN_FEATURE"}) {
		t.Errorf("BadRequest = %+v", e.BadRequest)
	}
	if e.ErrorInfo == nil || e.ErrorInfo.Reason != "BUDGET" || e.ErrorInfo.Metadata["decision_id"] != "d-1" {
		t.Errorf("ErrorInfo = %+v", e.ErrorInfo)
	}
	if len(e.QuotaFailure) != 1 || e.QuotaFailure[0].Subject != "principal:p/model:credit" {
		t.Errorf("QuotaFailure = %+v", e.QuotaFailure)
	}
	if e.RetryDelay == nil || *e.RetryDelay != 1500*time.Millisecond {
		t.Errorf("RetryDelay = %v", e.RetryDelay)
	}
}

func TestDecodeErrorWithoutDetails(t *testing.T) {
	if desiderata.DecodeError(nil) != nil {
		t.Error("nil error decoded to non-nil")
	}
	e := desiderata.DecodeError(status.Error(codes.Unauthenticated, "no credentials"))
	if e.Code != codes.Unauthenticated || e.BadRequest != nil || e.ErrorInfo != nil || e.RetryDelay != nil {
		t.Errorf("got %+v", e)
	}
	if e := desiderata.DecodeError(errors.New("plain")); e.Code != codes.Unknown {
		t.Errorf("plain error code = %v, want Unknown", e.Code)
	}
}
