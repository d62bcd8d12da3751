"""Write the JSON Schema of the Route and Service documents next to this file.

Run from anywhere with wardgate importable:  python docs/schema/generate.py

The schemas come from the pydantic models in ``wardgate/domain/documents.py``
(``Model.model_json_schema()``). They describe the shape of a document; some rules are
checked only by wardgate itself (durations, regex compilation, CIDR blocks, cross-field rules
such as "exactly one of backend or backends"), so ``wardgate validate -f FILE`` stays the
authority. See docs/DOCUMENTS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from wardgate.domain.documents import Route, Service

HERE = Path(__file__).resolve().parent
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_of(model: type[Route] | type[Service], file_name: str) -> dict[str, object]:
    schema = model.model_json_schema()
    return {"$schema": DIALECT, "$id": file_name, **schema}


def main() -> None:
    for model, file_name in ((Route, "route.schema.json"), (Service, "service.schema.json")):
        path = HERE / file_name
        path.write_text(json.dumps(schema_of(model, file_name), indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
