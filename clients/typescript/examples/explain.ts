/**
 * Asks a desiderata server why the demo model "credit" scores one applicant as
 * it does. Usage: npm run example -- [host:port] [api-key]   (plaintext; local demo)
 */
import { Consumption, DesiderataClient, DesiderataError, ExplanationKind } from "../src/index.js";

const [address = "127.0.0.1:50051", apiKey = "demo-ml_engineer-key"] = process.argv.slice(2);
const client = new DesiderataClient(address, { apiKey, insecure: true });
const features = Object.entries({
  seniority: { integer: 9 }, home: { category: "rent" }, time: { integer: 60 }, age: { integer: 30 },
  marital: { category: "married" }, records: { boolean: false }, job: { category: "freelance" },
  expenses: { number: 73 }, income: { number: 129 }, assets: { number: 0 }, debt: { number: 0 },
  amount: { number: 800 }, price: { number: 846 },
}).map(([name, value]) => ({ name, value }));

try {
  const { explanation } = await client.explain({
    model: "credit",
    instance: { features },
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
