//! A FHIR export of many resource types, as a synthetic-patient generator
//! writes one (practitioners and their roles, patients, related persons,
//! coverage, encounters, observations, conditions), through the built-in profile:
//! every PHI element the generator wrote changes, every other string stays,
//! and the round trip is exact. The PHI paths are the generator's own list,
//! not the profile's.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use super::{Setup, client, s, succeeded};

const GIVEN: [&str; 6] = ["Adam", "Maria", "Wei", "Fatima", "Olga", "Jamal"];
const FAMILY: [&str; 6] = [
    "Smith",
    "O'Connor",
    "Garcia-Lopez",
    "Nguyen",
    "Kowalski",
    "Okafor",
];

/// A resource and the paths of the PHI the generator put in it.
struct Written {
    resource: Value,
    phi: Vec<&'static str>,
}

fn practitioner(n: usize) -> Vec<Written> {
    let role = Written {
        resource: json!({
            "resourceType": "PractitionerRole", "id": format!("role{n}"),
            "practitioner": { "reference": format!("Practitioner/pr{n}"), "display": doctor(n) },
            "organization": { "reference": "Organization/ghh", "display": "Good Health Hospital" },
            "code": [{ "coding": [{ "system": "http://nucc.org/provider-taxonomy", "code": "208D00000X" }] }],
            "telecom": [{ "system": "phone", "value": format!("(555) 021-{:04}", n) }]
        }),
        phi: vec!["/practitioner/display", "/telecom/0/value"],
    };
    let person = Written {
        resource: json!({
            "resourceType": "Practitioner", "id": format!("pr{n}"),
            "identifier": [{ "system": "http://hl7.org/fhir/sid/us-npi", "value": format!("{}", 1_234_567_000 + n) }],
            "name": [{ "family": FAMILY[n % 6], "given": [GIVEN[(n + 1) % 6]], "prefix": ["Dr."] }],
            "telecom": [{ "system": "phone", "value": format!("(555) 020-{:04}", n), "use": "work" }],
            "gender": "male"
        }),
        phi: vec![
            "/identifier/0/value",
            "/name/0/family",
            "/name/0/given/0",
            "/telecom/0/value",
        ],
    };
    vec![person, role]
}

/// The display a reference to practitioner `n` carries.
fn doctor(n: usize) -> String {
    format!("Dr. {} {}", GIVEN[(n + 1) % 6], FAMILY[n % 6])
}

fn records(i: usize) -> Vec<Written> {
    let (given, family) = (GIVEN[i % 6], FAMILY[(i / 6) % 6]);
    let pid = format!("Patient/pt{i}");
    let gp = i % 20;
    let zip = format!("{:03}{:02}", 100 + i % 800, i % 7);
    vec![
        Written {
            resource: json!({
                "resourceType": "Patient", "id": format!("pt{i}"),
                "meta": { "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"] },
                "identifier": [
                    { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR" }] },
                      "system": "https://ghh.example.org/mrn", "value": format!("MRN{i:07}") },
                    { "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS" }] },
                      "system": "http://hl7.org/fhir/sid/us-ssn", "value": format!("{:03}-{:02}-{:04}", 100 + i % 600, 10 + i % 80, 1000 + i) },
                    { "type": { "coding": [{ "code": "DL" }] }, "system": "urn:oid:2.16.840.1.113883.4.3.25", "value": format!("S99{i:05}") }
                ],
                "name": [{ "use": "official", "text": format!("{given} {family}"), "family": family, "given": [given] }],
                "telecom": [
                    { "system": "phone", "value": format!("(555) 010-{:04}", i), "use": "home" },
                    { "system": "email", "value": format!("{}.{i}@example.org", given.to_lowercase()) }
                ],
                "gender": "female",
                "birthDate": format!("19{:02}-{:02}-{:02}", 30 + i % 70, 1 + i % 12, 1 + i % 28),
                "address": [{ "use": "home", "line": [format!("{} Elm St", 10 + i)], "city": "Springfield",
                              "district": "Hampden", "state": "MA", "postalCode": zip, "country": "US" }],
                "maritalStatus": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M" }] },
                "communication": [{ "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": "en-US" }] } }],
                "photo": [{ "contentType": "image/png", "title": format!("{given} {family} ID photo"), "url": format!("https://ghh.example.org/photos/{i}.png") }],
                "generalPractitioner": [{ "reference": format!("PractitionerRole/role{gp}"), "display": doctor(gp) }],
                "managingOrganization": { "reference": "Organization/ghh", "display": "Good Health Hospital" }
            }),
            phi: vec![
                "/identifier/0/value",
                "/identifier/1/value",
                "/identifier/2/value",
                "/name/0/text",
                "/name/0/family",
                "/name/0/given/0",
                "/telecom/0/value",
                "/telecom/1/value",
                "/birthDate",
                "/address/0/line/0",
                "/address/0/city",
                "/address/0/district",
                "/address/0/postalCode",
                "/photo/0/title",
                "/photo/0/url",
                "/generalPractitioner/0/display",
            ],
        },
        Written {
            resource: json!({
                "resourceType": "RelatedPerson", "id": format!("rp{i}"),
                "patient": { "reference": pid, "display": format!("{given} {family}") },
                "relationship": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "SPS" }] }],
                "name": [{ "family": family, "given": [GIVEN[(i + 3) % 6]] }],
                "telecom": [{ "system": "phone", "value": format!("(555) 030-{:04}", i) }, { "system": "url", "value": format!("https://social.example/{i}") }],
                "address": [{ "line": [format!("{} Elm St", 10 + i)], "city": "Springfield", "postalCode": format!("{:03}{:02}", 100 + i % 800, i % 7) }]
            }),
            phi: vec![
                "/patient/display",
                "/name/0/family",
                "/name/0/given/0",
                "/telecom/0/value",
                "/telecom/1/value",
                "/address/0/line/0",
                "/address/0/city",
                "/address/0/postalCode",
            ],
        },
        Written {
            resource: json!({
                "resourceType": "Coverage", "id": format!("cov{i}"), "status": "active",
                "identifier": [{ "system": "https://payer.example.org/member", "value": format!("MB{i:08}") }],
                "subscriberId": format!("SUB{i:06}"),
                "subscriber": { "identifier": { "system": "http://hl7.org/fhir/sid/us-ssn", "value": format!("{:03}-{:02}-{:04}", 100 + i % 600, 10 + i % 80, 1000 + i) } },
                "beneficiary": { "reference": pid, "display": format!("{given} {family}") },
                "relationship": { "coding": [{ "code": "self" }] },
                "payor": [{ "reference": "Organization/acme", "display": "Acme Health Plan" }],
                "class": [{ "type": { "coding": [{ "code": "group" }] }, "value": "GRP-100", "name": "Acme Gold" }]
            }),
            phi: vec![
                "/identifier/0/value",
                "/subscriberId",
                "/subscriber/identifier/value",
                "/beneficiary/display",
            ],
        },
        Written {
            resource: json!({
                "resourceType": "Encounter", "id": format!("enc{i}"), "status": "finished",
                "class": { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB" },
                "identifier": [{ "system": "https://ghh.example.org/visit", "value": format!("V{i:08}") }],
                "subject": { "reference": pid, "display": format!("{given} {family}") },
                "participant": [{ "individual": { "reference": format!("Practitioner/pr{gp}"), "display": doctor(gp) } }],
                "period": { "start": "2026-11-02T09:00:00Z", "end": "2026-11-02T09:30:00Z" },
                "location": [{ "location": { "reference": "Location/l1", "display": format!("Room {} West Wing", i % 30) } }],
                "serviceProvider": { "reference": "Organization/ghh", "display": "Good Health Hospital" }
            }),
            phi: vec![
                "/identifier/0/value",
                "/subject/display",
                "/participant/0/individual/display",
                "/location/0/location/display",
            ],
        },
        Written {
            resource: json!({
                "resourceType": "Observation", "id": format!("obs{i}"), "status": "final",
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
                "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }], "text": "Heart rate" },
                "subject": { "reference": pid },
                "encounter": { "reference": format!("Encounter/enc{i}") },
                "performer": [{ "reference": format!("Practitioner/pr{gp}"), "display": doctor(gp) }],
                "effectiveDateTime": "2026-11-02T09:10:00Z",
                "valueQuantity": { "value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" },
                "note": [{ "authorString": doctor(gp), "text": format!("Patient {given} anxious, retake in 5 min") }]
            }),
            phi: vec![
                "/performer/0/display",
                "/note/0/authorString",
                "/note/0/text",
            ],
        },
        Written {
            resource: json!({
                "resourceType": "Condition", "id": format!("cond{i}"),
                "clinicalStatus": { "coding": [{ "code": "active" }] },
                "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "44054006" }], "text": "Diabetes mellitus type 2" },
                "subject": { "reference": format!("urn:uuid:00000000-0000-0000-0000-{i:012}"), "display": format!("{given} {family}") },
                "recorder": { "reference": format!("Practitioner/pr{gp}"), "display": doctor(gp) },
                "onsetDateTime": "2019-04-01",
                "note": [{ "text": "Family history on mother's side" }]
            }),
            phi: vec!["/subject/display", "/recorder/display", "/note/0/text"],
        },
    ]
}

/// Every string in `value` by its JSON pointer.
fn strings(value: &Value, path: String, out: &mut BTreeMap<String, String>) {
    match value {
        Value::String(text) => {
            out.insert(path, text.clone());
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{path}/{i}"), out);
            }
        }
        Value::Object(members) => {
            for (key, item) in members {
                strings(item, format!("{path}/{key}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_many_resource_fhir_export_changes_every_phi_string_and_nothing_else() {
    let setup = Setup::new(&["tokenize:*", "detokenize:*"]).await;
    let (server, key) = (&setup.server, &setup.key);
    let mut written: Vec<Written> = (0..20).flat_map(practitioner).collect();
    for i in 0..300 {
        written.extend(records(i));
    }
    let export: String = written
        .iter()
        .map(|w| format!("{}\n", w.resource))
        .collect();
    let bundle = serde_json::to_string_pretty(&json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": written.iter().take(200).map(|w| json!({ "resource": w.resource })).collect::<Vec<_>>()
    }))
    .expect("bundle");
    for (name, format, original) in [
        ("export", "fhir", &export),
        ("bundle", "fhir-bundle", &bundle),
    ] {
        let (input, tokenized, back) = setup.files(name, "json");
        std::fs::write(&input, original).expect("input");
        let errors = setup.dir.path().join(format!("{name}.errors.csv"));
        let output = client(
            server,
            key,
            &[
                "bulk",
                "tokenize",
                "--format",
                format,
                s(&input),
                "-o",
                s(&tokenized),
                "--errors",
                s(&errors),
            ],
        );
        assert!(
            output.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
        succeeded(&client(
            server,
            key,
            &[
                "bulk",
                "detokenize",
                "--format",
                format,
                s(&tokenized),
                "-o",
                s(&back),
            ],
        ));
        assert!(
            std::fs::read(&back).expect("back") == original.as_bytes(),
            "{name}: the round trip gives back the input byte for byte"
        );
        let text = std::fs::read_to_string(&tokenized).expect("tokenized");
        let after: Vec<Value> = match format {
            "fhir" => text
                .lines()
                .map(|l| serde_json::from_str(l).expect("line"))
                .collect(),
            _ => serde_json::from_str::<Value>(&text).expect("bundle")["entry"]
                .as_array()
                .expect("entries")
                .iter()
                .map(|e| e["resource"].clone())
                .collect(),
        };
        let expected = if format == "fhir" { written.len() } else { 200 };
        assert_eq!(after.len(), expected, "{name}: every resource once");
        let mut kinds = HashSet::new();
        for (w, a) in written.iter().zip(&after) {
            let kind = w.resource["resourceType"].as_str().unwrap_or_default();
            kinds.insert(kind);
            let (mut old, mut new) = (BTreeMap::new(), BTreeMap::new());
            strings(&w.resource, String::new(), &mut old);
            strings(a, String::new(), &mut new);
            assert_eq!(
                old.keys().collect::<Vec<_>>(),
                new.keys().collect::<Vec<_>>(),
                "{name} {kind}: the same elements"
            );
            for (path, value) in &old {
                let phi = w.phi.contains(&path.as_str());
                assert_eq!(
                    value != &new[path],
                    phi,
                    "{name} {kind} {path}: {}",
                    if phi {
                        "PHI passed in clear"
                    } else {
                        "a non-PHI string changed"
                    }
                );
                // Sent word by word or whole, no word of it is left (words
                // shorter than 4 characters, or of digits alone, may meet
                // their token by chance; an e-mail address keeps its domain
                // by the format's design).
                let words = |t: &str| -> HashSet<String> {
                    t.split(|c: char| !c.is_alphanumeric())
                        .filter(|w| w.chars().count() >= 4 && w.chars().any(char::is_alphabetic))
                        .map(str::to_owned)
                        .collect()
                };
                if phi && !value.contains('@') {
                    let before = words(value);
                    let left = before.intersection(&words(&new[path])).count();
                    assert_eq!(left, 0, "{name} {kind} {path}: words passed in clear");
                }
            }
        }
        assert_eq!(kinds.len(), 8, "{name}: {kinds:?}");
        // A display shows the tokens of the name it shows, word by word.
        let tokens: BTreeMap<&str, &Value> = after
            .iter()
            .filter(|r| r["resourceType"] == "Practitioner")
            .map(|r| (r["id"].as_str().unwrap_or_default(), r))
            .collect();
        let mut shown_checked = 0;
        for r in after.iter().filter(|r| r["resourceType"] == "Encounter") {
            let reference = r["participant"][0]["individual"]["reference"]
                .as_str()
                .unwrap_or_default();
            let Some(doctor) = tokens.get(reference.trim_start_matches("Practitioner/")) else {
                continue;
            };
            // "Dr." is a word too, and is replaced as one.
            let shown = format!(
                " {} {}",
                doctor["name"][0]["given"][0].as_str().unwrap_or_default(),
                doctor["name"][0]["family"].as_str().unwrap_or_default()
            );
            let display = r["participant"][0]["individual"]["display"]
                .as_str()
                .unwrap_or_default();
            assert!(
                display.ends_with(&shown),
                "{name}: a display's words are the name's tokens"
            );
            shown_checked += 1;
        }
        assert!(
            shown_checked >= 20,
            "{name}: {shown_checked} displays checked"
        );
    }
}
