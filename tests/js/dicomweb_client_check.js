// The npm dicomweb-client, as a browser application uses it (here in Node,
// with an XMLHttpRequest polyfill): store the given Part 10 files, search for
// their study, retrieve each instance. Prints what it saw as JSON.
//
//   node dicomweb_client_check.js DICOMWEB_ROOT TOKEN PATIENT_ID FILE...
"use strict";
global.XMLHttpRequest = require("xhr2");
const crypto = require("crypto");
const fs = require("fs");
const { api } = require("dicomweb-client");

function sha256(buffer) {
  return crypto.createHash("sha256").update(Buffer.from(buffer)).digest("hex");
}

async function main() {
  const [url, token, patientID, ...files] = process.argv.slice(2);
  const client = new api.DICOMwebClient({ url, headers: { Authorization: `Bearer ${token}` } });
  const datasets = files.map((file) => {
    const bytes = fs.readFileSync(file);
    return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  });
  await client.storeInstances({ datasets });
  const studies = await client.searchForStudies({ queryParams: { PatientID: patientID } });
  const studyUID = studies[0]["0020000D"].Value[0];
  const instances = await client.searchForInstances({ studyInstanceUID: studyUID });
  const retrieved = [];
  for (const instance of instances) {
    const buffer = await client.retrieveInstance({
      studyInstanceUID: studyUID,
      seriesInstanceUID: instance["0020000E"].Value[0],
      sopInstanceUID: instance["00080018"].Value[0],
    });
    retrieved.push({ sopInstanceUID: instance["00080018"].Value[0], sha256: sha256(buffer) });
  }
  const stored = datasets.map(sha256);
  process.stdout.write(JSON.stringify({ studies: studies.map((s) => s["0020000D"].Value[0]), stored, retrieved }));
}

main().catch((error) => {
  process.stderr.write(`${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
