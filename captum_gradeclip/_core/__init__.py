from .layer_gradeclip import ImageGradECLIP, LayerGradECLIP, TextGradECLIP

__all__ = ["ImageGradECLIP", "LayerGradECLIP", "TextGradECLIP"]
