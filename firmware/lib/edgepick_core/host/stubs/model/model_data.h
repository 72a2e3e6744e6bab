extern const unsigned char g_edgepick_model[];
extern const unsigned int g_edgepick_model_len;
