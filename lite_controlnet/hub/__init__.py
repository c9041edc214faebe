"""The Hugging Face Hub: a trained control module out (`push_to_hub`, with its model card) and in
(`module_folder`, a Hub model id downloaded to start a run from)."""
