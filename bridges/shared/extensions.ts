/** The KServe v2 / Triton extensions every bridge reports in server metadata. */
export const EXTENSIONS = ['binary_tensor_data', 'model_configuration', 'statistics', 'schedule_policy', 'model_repository', 'sequence', 'classification', 'system_shared_memory'];
