/**
 * Asks a desiderata server why the demo model "credit" scores one applicant as
 * it does. Usage: npm run example -- [host:port] [api-key]   (plaintext; local demo)
 */
import { Consumption, DesiderataClient, DesiderataError, ExplanationKind, instance } from "../src/index.js";

const [address = "127.0.0.1:50051", apiKey = "demo-ml_engineer-key"] = process.argv.slice(2);
const client = new DesiderataClient(address, { apiKey, insecure: true });
// Plain values: booleans, strings (categories), numbers (integral ones go as integers).
const applicant = instance({
  seniority: 9, home: "rent", time: 60, age: 30, marital: "married", records: false, job: "freelance",
  expenses: 73, income: 129, assets: 0, debt: 0, amount: 800, price: 846,
});

try {
  const { explanation } = await client.explain({
    model: "credit",
    instance: applicant,
    kind: ExplanationKind.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
    purpose: "debugging",
    consumption: Consumption.CONSUMPTION_STATIC,
  });
  console.log(`${explanation?.model} predicts "${explanation?.prediction?.label}" (tier ${explanation?.disclosure?.tier})`);
  for (const a of explanation?.featureAttribution?.attributions ?? []) {
    console.log(`${String(a.rank).padStart(3)}  ${a.feature.padEnd(12)} ${a.value.toFixed(4)}`);
  }
  for (const sentence of explanation?.narrative ?? []) console.log(sentence);
} catch (err) {
  if (err instanceof DesiderataError) for (const v of err.badRequest ?? []) console.error(`  ${v.field}: ${v.description}`);
  throw err;
} finally {
  client.close();
}
