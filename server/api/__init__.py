"""The gRPC transport: servicers, protobuf conversion and status mapping. No SQL, joblib or sklearn here."""
