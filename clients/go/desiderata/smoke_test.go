package desiderata_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/desiderata-xai/desiderata/clients/go/desiderata"
	desideratav1 "github.com/desiderata-xai/desiderata/clients/go/desiderata/v1"
)

// Demo credentials of the server's demo mode (fixed, public, demo only).
const (
	mlEngineerKey   = "demo-ml_engineer-key"
	regulatorKey    = "demo-regulator-key"
	endUserKey      = "demo-end_user-key"      // acts for demoSubject
	domainExpertKey = "demo-domain_expert-key" // domain "credit"
	demoSubject     = "applicant-0001"
	otherSubject    = "applicant-0002"
)

func connect(t *testing.T, addr, key string) *desiderata.Client {
	t.Helper()
	opts := []desiderata.Option{desiderata.WithInsecure(), desiderata.WithDefaultTimeout(60 * time.Second)}
	if key != "" {
		opts = append(opts, desiderata.WithAPIKey(key))
	}
	c, err := desiderata.New(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// applicantFeatures is a complete instance of the demo model "credit".
func applicantFeatures() map[string]any {
	return map[string]any{
		"seniority": 9, "home": "rent", "time": 60, "age": 30, "marital": "married",
		"records": false, "job": "freelance", "expenses": 73.0, "income": 129.0,
		"assets": 0.0, "debt": 0.0, "amount": 800.0, "price": 846.0,
	}
}

// applicant builds the instance with the SDK helper, so the smoke test checks
// that the server accepts what NewInstance produces.
func applicant() *desideratav1.Instance { return desiderata.MustInstance(applicantFeatures()) }

func explainRequest(inst *desideratav1.Instance) *desideratav1.ExplainRequest {
	return &desideratav1.ExplainRequest{
		Model:       "credit",
		Instance:    inst,
		Kind:        desideratav1.ExplanationKind_EXPLANATION_KIND_FEATURE_ATTRIBUTION,
		Purpose:     "debugging",
		Consumption: desideratav1.Consumption_CONSUMPTION_STATIC,
	}
}

// attributionValues is an explanation's feature attributions as (feature, value) pairs, in order.
func attributionValues(e *desideratav1.Explanation) []string {
	var out []string
	for _, a := range e.GetFeatureAttribution().GetAttributions() {
		out = append(out, fmt.Sprintf("%s=%v", a.GetFeature(), a.GetValue()))
	}
	return out
}

func TestSmoke(t *testing.T) {
	addr := startServer(t)
	ctx := context.Background()
	engineer := connect(t, addr, mlEngineerKey)

	t.Run("Explain", func(t *testing.T) {
		resp, err := engineer.Explanations.Explain(ctx, explainRequest(applicant()))
		if err != nil {
			t.Fatalf("Explain: %v", desiderata.DecodeError(err))
		}
		e := resp.GetExplanation()
		if e.GetKind() != desideratav1.ExplanationKind_EXPLANATION_KIND_FEATURE_ATTRIBUTION {
			t.Errorf("kind = %v", e.GetKind())
		}
		attrs := e.GetFeatureAttribution().GetAttributions()
		if len(attrs) == 0 {
			t.Fatalf("no attributions in %v", e)
		}
		for _, a := range attrs {
			if a.GetFeature() == "" {
				t.Errorf("attribution without a feature name: %v", a)
			}
		}
		if e.GetDisclosure().GetDecisionId() == "" {
			t.Errorf("no policy decision id in the disclosure: %v", e.GetDisclosure())
		}
	})

	t.Run("ExplainBatch", func(t *testing.T) {
		var rows []map[string]any
		for _, amount := range []float64{500.0, 1500.0, 4000.0} {
			row := applicantFeatures()
			row["amount"] = amount
			rows = append(rows, row)
		}
		batch, err := engineer.ExplainBatch(ctx, "credit", rows, "debugging")
		if err != nil {
			t.Fatalf("ExplainBatch: %v", desiderata.DecodeError(err))
		}
		if len(batch) != len(rows) {
			t.Fatalf("%d explanations for %d rows", len(batch), len(rows))
		}
		distinct := map[string]bool{}
		for i, row := range rows {
			got := attributionValues(batch[i])
			if len(got) == 0 {
				t.Fatalf("row %d: no attributions in %v", i, batch[i])
			}
			distinct[fmt.Sprint(got)] = true
			alone, err := engineer.Explanations.Explain(ctx, explainRequest(desiderata.MustInstance(row)))
			if err != nil {
				t.Fatalf("Explain of row %d: %v", i, desiderata.DecodeError(err))
			}
			if want := attributionValues(alone.GetExplanation()); !slices.Equal(got, want) {
				t.Errorf("row %d (amount %v): batch attributions %v, want those of Explain alone %v",
					i, row["amount"], got, want)
			}
		}
		if len(distinct) != len(rows) { // else a reordering would go unnoticed
			t.Errorf("%d distinct answers for %d different rows", len(distinct), len(rows))
		}
	})

	t.Run("ExplainBatchInvalidRow", func(t *testing.T) {
		bad := applicantFeatures()
		bad["bogus"] = 1.0
		_, err := engineer.ExplainBatch(ctx, "credit", []map[string]any{applicantFeatures(), bad}, "debugging")
		e := desiderata.DecodeError(err)
		if e == nil || e.Code != codes.InvalidArgument {
			t.Fatalf("err = %v, want INVALID_ARGUMENT", err)
		}
		var fields []string
		for _, v := range e.BadRequest {
			fields = append(fields, v.Field)
		}
		if !slices.Contains(fields, "instances[1].features[bogus]") {
			t.Errorf("field violations %v, want instances[1].features[bogus] among them", fields)
		}
	})

	t.Run("ExplainBatchEndUser", func(t *testing.T) {
		endUser := connect(t, addr, endUserKey)
		_, err := endUser.ExplainBatch(ctx, "credit", []map[string]any{applicantFeatures()}, "transparency")
		if e := desiderata.DecodeError(err); e == nil || e.Code != codes.PermissionDenied {
			t.Fatalf("end user ExplainBatch: err = %v, want PERMISSION_DENIED", err)
		}
	})

	t.Run("ExplainDecisions", func(t *testing.T) {
		var ids []string
		for _, subject := range []string{"applicant-batch-a", "applicant-batch-b"} {
			pred, err := engineer.Models.Predict(ctx, &desideratav1.PredictRequest{
				Model: "credit", Instance: applicant(), SubjectId: subject,
			})
			if err != nil {
				t.Fatalf("Predict for %s: %v", subject, desiderata.DecodeError(err))
			}
			if pred.GetDecisionId() == "" {
				t.Fatalf("Predict for %s returned no decision id: %v", subject, pred)
			}
			ids = append(ids, pred.GetDecisionId())
		}
		if ids[0] == ids[1] { // else a reordering would go unnoticed
			t.Fatalf("two predictions recorded as one decision %q", ids[0])
		}
		batch, err := engineer.ExplainDecisions(ctx, ids, "debugging")
		if err != nil {
			t.Fatalf("ExplainDecisions: %v", desiderata.DecodeError(err))
		}
		if len(batch) != len(ids) {
			t.Fatalf("%d explanations for %d decisions", len(batch), len(ids))
		}
		for i, e := range batch {
			if got := e.GetRecordedDecisionId(); got != ids[i] {
				t.Errorf("explanation %d: recorded_decision_id = %q, want %q", i, got, ids[i])
			}
			if len(e.GetFeatureAttribution().GetAttributions()) == 0 {
				t.Errorf("explanation %d: no attributions for decision %s", i, ids[i])
			}
		}

		_, err = engineer.ExplainDecisions(ctx, []string{ids[0], "rec_doesnotexist"}, "debugging")
		e := desiderata.DecodeError(err)
		if e == nil || e.Code != codes.NotFound {
			t.Fatalf("ExplainDecisions with an unknown id: err = %v, want NOT_FOUND", err)
		}
		if !strings.Contains(e.Message, "decision_ids[1]") {
			t.Errorf("NOT_FOUND message %q does not name decision_ids[1]", e.Message)
		}
	})

	t.Run("GetCapabilities", func(t *testing.T) {
		resp, err := engineer.Explanations.GetCapabilities(ctx, &desideratav1.GetCapabilitiesRequest{
			Model: "credit", Purpose: "debugging", Consumption: desideratav1.Consumption_CONSUMPTION_STATIC,
		})
		if err != nil {
			t.Fatalf("GetCapabilities: %v", desiderata.DecodeError(err))
		}
		if resp.GetRole() != "ml_engineer" {
			t.Errorf("role = %q, want ml_engineer", resp.GetRole())
		}
		found := false
		for _, c := range resp.GetCapabilities() {
			found = found || c.GetKind() == desideratav1.ExplanationKind_EXPLANATION_KIND_FEATURE_ATTRIBUTION
		}
		if !found {
			t.Errorf("no feature attribution capability for an ML engineer: %v", resp.GetCapabilities())
		}
	})

	t.Run("PredictThenExplainDecision", func(t *testing.T) {
		pred, err := engineer.Models.Predict(ctx, &desideratav1.PredictRequest{
			Model: "credit", Instance: applicant(), SubjectId: demoSubject,
		})
		if err != nil {
			t.Fatalf("Predict: %v", desiderata.DecodeError(err))
		}
		if pred.GetDecisionId() == "" || len(pred.GetPrediction().GetProbabilities()) == 0 {
			t.Fatalf("Predict returned no decision id or probabilities: %v", pred)
		}
		resp, err := engineer.Explanations.ExplainDecision(ctx, &desideratav1.ExplainDecisionRequest{
			DecisionId:  pred.GetDecisionId(),
			Kind:        desideratav1.ExplanationKind_EXPLANATION_KIND_FEATURE_ATTRIBUTION,
			Purpose:     "debugging",
			Consumption: desideratav1.Consumption_CONSUMPTION_STATIC,
		})
		if err != nil {
			t.Fatalf("ExplainDecision: %v", desiderata.DecodeError(err))
		}
		if got := resp.GetExplanation().GetRecordedDecisionId(); got != pred.GetDecisionId() {
			t.Errorf("recorded_decision_id = %q, want %q", got, pred.GetDecisionId())
		}
		if len(resp.GetExplanation().GetFeatureAttribution().GetAttributions()) == 0 {
			t.Errorf("no attributions for the recorded decision")
		}
	})

	t.Run("FeedbackThenAudit", func(t *testing.T) {
		resp, err := engineer.Explanations.Explain(ctx, explainRequest(applicant()))
		if err != nil {
			t.Fatalf("Explain: %v", desiderata.DecodeError(err))
		}
		explained := resp.GetExplanation().GetDisclosure().GetDecisionId()
		if explained == "" {
			t.Fatalf("no policy decision id in the disclosure: %v", resp.GetExplanation().GetDisclosure())
		}
		fb, err := engineer.Explanations.SubmitFeedback(ctx, &desideratav1.SubmitFeedbackRequest{
			Model:        "credit",
			DecisionId:   explained,
			Verdict:      desideratav1.FeedbackVerdict_FEEDBACK_VERDICT_DISAGREE,
			ShouldMatter: []string{"income"},
			Purpose:      "debugging",
		})
		if err != nil {
			t.Fatalf("SubmitFeedback: %v", desiderata.DecodeError(err))
		}
		if fb.GetDecisionId() == "" {
			t.Fatalf("SubmitFeedback returned no decision id: %v", fb)
		}

		// Engineers do not read the audit log; the refusal is itself audited.
		_, err = engineer.Audit.QueryAudit(ctx, &desideratav1.QueryAuditRequest{Model: "credit", Purpose: "audit"})
		denied := desiderata.DecodeError(err)
		if denied == nil || denied.Code != codes.PermissionDenied {
			t.Fatalf("engineer QueryAudit: err = %v, want PERMISSION_DENIED", err)
		}

		regulator := connect(t, addr, regulatorKey)
		const pageSize = 2
		req := &desideratav1.QueryAuditRequest{Model: "credit", Purpose: "audit", PageSize: pageSize}
		entries, err := regulator.AuditEntries(ctx, req)
		if err != nil {
			t.Fatalf("AuditEntries: %v", desiderata.DecodeError(err))
		}
		if req.GetPageToken() != "" {
			t.Errorf("AuditEntries modified the request: page_token = %q", req.GetPageToken())
		}
		// Explain, feedback and the refusal alone are three records: more than a page.
		if len(entries) <= pageSize {
			t.Fatalf("%d entries with page_size %d: only the first page was read?", len(entries), pageSize)
		}
		byID := map[string]*desideratav1.AuditEntry{}
		for i, e := range entries {
			if i > 0 && e.GetSeq() <= entries[i-1].GetSeq() {
				t.Errorf("seq %d after %d: not strictly increasing across pages", e.GetSeq(), entries[i-1].GetSeq())
			}
			if e.GetModel() != "credit" {
				t.Errorf("entry of model %q in an audit of credit: %v", e.GetModel(), e)
			}
			byID[e.GetDecisionId()] = e
		}
		if e := byID[explained]; e == nil || !e.GetAllowed() || e.GetRole() != "ml_engineer" {
			t.Errorf("explanation %s not audited as an allowed ml_engineer decision: %v", explained, e)
		}
		if e := byID[fb.GetDecisionId()]; e == nil || !e.GetAllowed() || e.GetAction() != "feedback" {
			t.Errorf("feedback %s not audited as an allowed feedback decision: %v", fb.GetDecisionId(), e)
		}
		if denied.ErrorInfo != nil && denied.ErrorInfo.Metadata["decision_id"] != "" {
			id := denied.ErrorInfo.Metadata["decision_id"]
			if e := byID[id]; e == nil || e.GetAllowed() {
				t.Errorf("refused audit read %s not audited as denied: %v", id, e)
			}
		} else {
			t.Errorf("PERMISSION_DENIED without the decision id: %+v", denied)
		}

		verified, err := regulator.Audit.VerifyAudit(ctx, &desideratav1.VerifyAuditRequest{Model: "credit", Purpose: "audit"})
		if err != nil {
			t.Fatalf("VerifyAudit: %v", desiderata.DecodeError(err))
		}
		if !verified.GetOk() || verified.GetRecords() < uint64(len(entries)) {
			t.Errorf("VerifyAudit = %v, want ok over at least %d records", verified, len(entries))
		}
	})

	t.Run("Decisions", func(t *testing.T) {
		predict := func(subject string) string {
			t.Helper()
			pred, err := engineer.Models.Predict(ctx, &desideratav1.PredictRequest{
				Model: "credit", Instance: applicant(), SubjectId: subject,
			})
			if err != nil {
				t.Fatalf("Predict for %s: %v", subject, desiderata.DecodeError(err))
			}
			if pred.GetDecisionId() == "" {
				t.Fatalf("Predict for %s returned no decision id: %v", subject, pred)
			}
			return pred.GetDecisionId()
		}
		var own []string // oldest first
		for range 3 {
			own = append(own, predict(demoSubject))
		}
		other := predict(otherSubject)

		endUser := connect(t, addr, endUserKey)
		const pageSize = 2 // the three new decisions alone span two pages
		req := &desideratav1.ListDecisionsRequest{Model: "credit", Purpose: "transparency", PageSize: pageSize}
		decisions, err := endUser.Decisions(ctx, req)
		if err != nil {
			t.Fatalf("Decisions: %v", desiderata.DecodeError(err))
		}
		if req.GetPageToken() != "" {
			t.Errorf("Decisions modified the request: page_token = %q", req.GetPageToken())
		}
		if len(decisions) < len(own) {
			t.Fatalf("%d decisions, want at least the %d new ones: %v", len(decisions), len(own), decisions)
		}
		for i, id := range own {
			// newest first: the last prediction comes first
			if got := decisions[len(own)-1-i].GetDecisionId(); got != id {
				t.Errorf("decision %d = %s, want %s (newest first: %v)", len(own)-1-i, got, id, own)
			}
		}
		seen := map[string]bool{}
		for _, d := range decisions {
			if seen[d.GetDecisionId()] {
				t.Errorf("decision %s listed twice across pages", d.GetDecisionId())
			}
			seen[d.GetDecisionId()] = true
			if d.GetDecisionId() == other {
				t.Errorf("%s's decision %s in %s's list", otherSubject, other, demoSubject)
			}
			if d.GetModel() != "credit" {
				t.Errorf("decision of model %q in a list of credit: %v", d.GetModel(), d)
			}
			if c := d.GetPredictedClass(); c != "good" && c != "bad" {
				t.Errorf("predicted class %q, want good or bad: %v", c, d)
			}
		}

		// An end user lists only their own subject's decisions.
		_, err = endUser.Decisions(ctx, &desideratav1.ListDecisionsRequest{
			Model: "credit", Purpose: "transparency", SubjectId: otherSubject,
		})
		if e := desiderata.DecodeError(err); e == nil || e.Code != codes.PermissionDenied {
			t.Errorf("end user listing %s: err = %v, want PERMISSION_DENIED", otherSubject, err)
		}

		// A loan officer handling a contest lists any subject's decisions of a credit model.
		expert := connect(t, addr, domainExpertKey)
		theirs, err := expert.Decisions(ctx, &desideratav1.ListDecisionsRequest{
			Model: "credit", Purpose: "contest", SubjectId: otherSubject,
		})
		if err != nil {
			t.Fatalf("domain expert Decisions: %v", desiderata.DecodeError(err))
		}
		if len(theirs) != 1 || theirs[0].GetDecisionId() != other {
			t.Errorf("domain expert's list of %s = %v, want only %s", otherSubject, theirs, other)
		}
	})

	t.Run("Unauthenticated", func(t *testing.T) {
		anonymous := connect(t, addr, "")
		_, err := anonymous.Explanations.Explain(ctx, explainRequest(applicant()))
		if e := desiderata.DecodeError(err); e == nil || e.Code != codes.Unauthenticated {
			t.Fatalf("err = %v, want UNAUTHENTICATED", err)
		}
	})

	t.Run("InvalidArgument", func(t *testing.T) {
		features := applicantFeatures()
		delete(features, "seniority")
		features["shoe_size"] = 42.0
		_, err := engineer.Explanations.Explain(ctx, explainRequest(desiderata.MustInstance(features)))
		e := desiderata.DecodeError(err)
		if e == nil || e.Code != codes.InvalidArgument {
			t.Fatalf("err = %v, want INVALID_ARGUMENT", err)
		}
		if len(e.BadRequest) == 0 {
			t.Fatalf("INVALID_ARGUMENT without field violations: %+v", e)
		}
		for _, v := range e.BadRequest {
			if v.Field == "" || v.Description == "" {
				t.Errorf("incomplete field violation: %+v", v)
			}
		}
	})
}
