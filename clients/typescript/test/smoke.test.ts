/** Smoke test of the SDK against a real server on the demo model. */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { status } from "@grpc/grpc-js";

import {
  Consumption,
  DesiderataClient,
  DesiderataError,
  ExplanationKind,
  type Feature,
  type FeatureValue,
} from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

const ML_ENGINEER_KEY = "demo-ml_engineer-key"; // demo credential, public by design
const SUBJECT = "applicant-0001";

function applicant(): Feature[] {
  const values: Record<string, FeatureValue> = {
    seniority: { integer: 9 },
    home: { category: "rent" },
    time: { integer: 60 },
    age: { integer: 30 },
    marital: { category: "married" },
    records: { boolean: false },
    job: { category: "freelance" },
    expenses: { number: 73 },
    income: { number: 129 },
    assets: { number: 0 },
    debt: { number: 0 },
    amount: { number: 800 },
    price: { number: 846 },
  };
  return Object.entries(values).map(([name, value]) => ({ name, value }));
}

const attribution = {
  model: "credit",
  kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
  purpose: "debugging",
  consumption: Consumption.CONSUMPTION_STATIC,
};

describe("desiderata TypeScript SDK against a real server", () => {
  let server: RunningServer;
  let engineer: DesiderataClient;

  before(async () => {
    server = await startServer();
    engineer = new DesiderataClient(server.address, { apiKey: ML_ENGINEER_KEY, insecure: true, timeoutMs: 60_000 });
  });
  after(() => {
    engineer?.close();
    server?.stop();
  });

  test("a round_robin client reaches the server through an address list", async () => {
    const balanced = new DesiderataClient(`ipv4:${server.address}`, {
      apiKey: ML_ENGINEER_KEY,
      insecure: true,
      timeoutMs: 60_000,
      loadBalancing: "round_robin",
    });
    try {
      const { explanation } = await balanced.explain({ ...attribution, instance: { features: applicant() } });
      assert.ok((explanation?.featureAttribution?.attributions.length ?? 0) > 0);
    } finally {
      balanced.close();
    }
    assert.throws(
      () => new DesiderataClient("x", { insecure: true, loadBalancing: "random" as "round_robin" }),
      /loadBalancing must be/,
    );
  });

  test("Explain returns feature attributions with a policy decision", async () => {
    const { explanation } = await engineer.explain({ ...attribution, instance: { features: applicant() } });
    assert.equal(explanation?.kind, ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION);
    const attributions = explanation?.featureAttribution?.attributions ?? [];
    assert.ok(attributions.length > 0, "no attributions");
    for (const a of attributions) assert.notEqual(a.feature, "");
    assert.notEqual(explanation?.disclosure?.decisionId ?? "", "");
  });

  test("GetCapabilities reports the caller's role and kinds", async () => {
    const caps = await engineer.getCapabilities({
      model: "credit",
      purpose: "debugging",
      consumption: Consumption.CONSUMPTION_STATIC,
    });
    assert.equal(caps.role, "ml_engineer");
    assert.ok(caps.capabilities.some((c) => c.kind === ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION));
  });

  test("ExplainDecision explains a decision recorded by Predict", async () => {
    const predicted = await engineer.predict({ model: "credit", instance: { features: applicant() }, subjectId: SUBJECT });
    assert.notEqual(predicted.decisionId, "");
    assert.ok((predicted.prediction?.probabilities.length ?? 0) > 0);
    const { explanation } = await engineer.explainDecision({
      decisionId: predicted.decisionId,
      kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
      purpose: "debugging",
      consumption: Consumption.CONSUMPTION_STATIC,
    });
    assert.equal(explanation?.recordedDecisionId, predicted.decisionId);
    assert.ok((explanation?.featureAttribution?.attributions.length ?? 0) > 0);
  });

  test("a call without credentials is UNAUTHENTICATED", async () => {
    const anonymous = new DesiderataClient(server.address, { insecure: true });
    try {
      await assert.rejects(anonymous.explain({ ...attribution, instance: { features: applicant() } }), (err) => {
        assert.ok(err instanceof DesiderataError);
        assert.equal(err.code, status.UNAUTHENTICATED);
        return true;
      });
    } finally {
      anonymous.close();
    }
  });

  test("an unknown and a missing feature are INVALID_ARGUMENT with field violations", async () => {
    const features = applicant().slice(1); // drops "seniority"
    features.push({ name: "shoe_size", value: { number: 42 } });
    await assert.rejects(engineer.explain({ ...attribution, instance: { features } }), (err) => {
      assert.ok(err instanceof DesiderataError);
      assert.equal(err.code, status.INVALID_ARGUMENT);
      assert.ok(err.badRequest && err.badRequest.length > 0, "no field violations decoded");
      for (const v of err.badRequest) {
        assert.notEqual(v.field, "");
        assert.notEqual(v.description, "");
      }
      return true;
    });
  });

  test("leaving an ExplainStream early cancels the call and frees the server's worker", async () => {
    // One worker, and a stream asking for far more work than the next call's deadline allows:
    // if leaving the loop did not cancel the call, the next call would queue behind it and time out.
    const single = await startServer(90_000, {
      DESIDERATA_SERVER__WORKERS: "1",
      DESIDERATA_EXPLAIN__MAX_SAMPLES: "50000000",
    });
    const client = new DesiderataClient(single.address, { apiKey: ML_ENGINEER_KEY, insecure: true, timeoutMs: 60_000 });
    try {
      const endless = { method: "permutation_shapley", targetStdError: 1e-9, maxSamples: 50_000_000 };
      let refinements = 0;
      for await (const response of client.explainStream({
        request: { ...attribution, instance: { features: applicant() }, params: { attribution: endless } },
      })) {
        assert.equal(response.final, false);
        refinements += 1;
        break;
      }
      assert.equal(refinements, 1);
      const { explanation } = await client.explain(
        { ...attribution, instance: { features: applicant() }, params: { attribution: { method: "integrated_gradients" } } },
        { timeoutMs: 5_000 },
      );
      assert.ok((explanation?.featureAttribution?.attributions.length ?? 0) > 0);
    } finally {
      client.close();
      single.stop();
    }
  });
});
